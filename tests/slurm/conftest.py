"""tests/slurm submits the templates of scripts/slurm to a real SLURM (a one-node cluster on this
machine: ``bash .ci/slurm.sh start``; the clients find it through ``SLURM_CONF``, else in
``$NEMO_CRAFT_SLURM_DIR`` or /tmp/nemo_craft_slurm). Where no cluster answers the tests skip,
naming why, unless NEMO_CRAFT_EXPECT_SLURM=1 (CI sets it): then they fail."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.slurm._jobs import REPO, slurm_conf, slurm_problem


@pytest.fixture(autouse=True)
def _needs_slurm():
    problem = slurm_problem()
    if problem is None:
        return
    if os.environ.get("NEMO_CRAFT_EXPECT_SLURM") == "1":
        pytest.fail(f"NEMO_CRAFT_EXPECT_SLURM=1 but {problem}")
    pytest.skip(problem)


@pytest.fixture
def slurm_env() -> dict:
    """The environment of ``sbatch``: bare mode, this interpreter's torchrun, this checkout first
    on the path, one thread per rank (the jobs share the machine's cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "NEMO_CRAFT_"))}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        SLURM_CONF=slurm_conf(),
        PATH=f"{bin_dir}:{env.get('PATH', '')}",
        TORCHRUN=str(Path(bin_dir) / "torchrun"),
        PYTHONPATH=f"{REPO}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO),
        CONTAINER_IMAGE="none",
        NPROC_PER_NODE="2",
        OMP_NUM_THREADS="1",
    )
    return env
