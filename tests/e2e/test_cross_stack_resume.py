"""A checkpoint written on the other supported stack resumes on this one, and the resumed step is
the one the writing stack computed without stopping.

CI runs this in its Python 3.12 job (megatron-core 0.19) with ``NEMO_CRAFT_OTHER_PYTHON`` set
to the Python 3.11 job's interpreter (megatron-core 0.16.1), so a run started on the older stack
continues on the newer one (docs/compatibility.md). Without that variable there is no second
stack to write with, and the test is skipped. Both runs are ``nemo-craft train`` processes with
this checkout's conf/ and the tiny CPU settings of the end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e._bodies_train import SMALL

REPO = Path(__file__).resolve().parents[2]
OTHER = os.environ.get("NEMO_CRAFT_OTHER_PYTHON")
_VOLATILE = ("time/", "perf/")
_STEPS = ["trainer.max_steps=3", "checkpoint.save_every=2", "checkpoint.keep_last=3"]


def _stack(python: str) -> str:
    """'Python X.Y, megatron-core V' of an interpreter."""
    code = (
        "import sys, megatron.core as m; print(f'Python {sys.version_info[0]}.{sys.version_info[1]}, "
        "megatron-core {m.__version__}')"
    )
    return (
        subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, env=_env())
        .stdout.strip()
        .splitlines()[-1]
    )


def _env() -> dict:
    # each interpreter finds nemo_craft in its own venv; nothing of this process's paths leaks over
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _train(python: str, run_dir: Path, overrides: list[str]) -> list[dict]:
    """Run ``nemo-craft train`` with ``python``; its metrics rows."""
    cmd = [python, "-m", "nemo_craft", "train", *SMALL, f"run_dir={run_dir}", *overrides]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(_VOLATILE)}


@pytest.mark.skipif(not OTHER, reason="NEMO_CRAFT_OTHER_PYTHON (the other stack's interpreter) is not set")
def test_a_checkpoint_of_the_other_stack_resumes_here_as_the_uninterrupted_run(tmp_path):
    theirs, ours = _stack(OTHER), _stack(sys.executable)
    assert theirs != ours, f"NEMO_CRAFT_OTHER_PYTHON runs this same stack ({ours})"
    straight = _train(OTHER, tmp_path / "theirs", _STEPS)  # saves step 2 and the final step 3
    checkpoint = tmp_path / "theirs" / "checkpoints" / "step_000002"
    assert (checkpoint / "COMPLETE").exists(), f"{theirs} wrote no step-2 checkpoint"
    resumed = _train(sys.executable, tmp_path / "ours", _STEPS + [f"checkpoint.resume={checkpoint}"])
    assert [r["step"] for r in resumed] == [3], f"{ours} did not continue at step 3 from {theirs}'s checkpoint"
    expected, got = _stable(straight[-1]), _stable(resumed[-1])
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        # float32 rounding may differ between the two builds of torch and megatron's kernels
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{key}: {ours} {got[key]} vs {theirs} {value}"
