"""tests/vllm needs vLLM. Where it is missing the tests skip, unless NEMO_CRAFT_EXPECT_VLLM=1 (set
by CI's job that installs it): then a missing or broken vLLM fails them instead of hiding them."""

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _needs_vllm():
    from nemo_craft.rollout.vllm_backend import vllm_problem

    problem = vllm_problem()
    if problem is None:
        return
    if os.environ.get("NEMO_CRAFT_EXPECT_VLLM") == "1":
        pytest.fail(f"NEMO_CRAFT_EXPECT_VLLM=1 but {problem}")
    pytest.skip(problem)


def _shm_in_use() -> set[str]:
    """Paths under /dev/shm that a live process holds open or mapped."""
    held = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            held.add(os.readlink(fd))
        except OSError:
            pass
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text().splitlines()
        except OSError:
            continue
        held.update(line.split(maxsplit=5)[-1] for line in lines if "/dev/shm/" in line)
    return held


@pytest.fixture(autouse=True)
def _no_stale_vllm_shm():
    """vLLM's CPU workers at TP > 1 create /dev/shm/<group>-cpushm_<rank> exclusively; one left by a
    killed run makes the next engine fail ("create shm in SHMManager failed. errno: 17",
    docs/troubleshooting.md). Remove those no live process holds, before each test."""
    stale = [f for f in Path("/dev/shm").glob("*cpushm*") if str(f) not in _shm_in_use()]
    for f in stale:
        f.unlink(missing_ok=True)
