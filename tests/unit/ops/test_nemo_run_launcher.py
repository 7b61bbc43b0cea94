"""scripts/nemo_run/launch.py without NeMo-Run installed: its arguments, command and environment,
and a clear error when it would need NeMo-Run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PATH = REPO / "scripts" / "nemo_run" / "launch.py"


@pytest.fixture(scope="module")
def launch():
    spec = importlib.util.spec_from_file_location("nemo_run_launch", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_importing_it_does_not_import_nemo_run(launch):
    assert "nemo_run" not in sys.modules


def test_same_training_command_and_environment_as_the_sbatch_template(launch):
    args = launch.parse_args(
        [
            "--account",
            "acc",
            "--partition",
            "batch",
            "--nodes",
            "2",
            "--container-image",
            "/c.sqsh",
            "--mount",
            "/data:/data",
            "--",
            "+recipe=qwen3_8b_2nodes",
            "method=sdar",
        ]
    )
    assert launch.train_args(args.overrides) == [
        "train",
        "checkpoint.resume=auto",
        "+recipe=qwen3_8b_2nodes",
        "method=sdar",
    ]
    assert launch.container_mounts(args) == [f"{REPO}:/workspace/nemo_craft", "/data:/data"]
    env = launch.job_env()
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["PYTHONPATH"] == "/workspace/nemo_craft"
    exported = [
        line.split("=")[0].split()[1]
        for line in (REPO / "scripts/slurm/env.sh").read_text().splitlines()
        if line.startswith("export ")
    ]
    assert sorted(exported) == sorted(set(env) - {"PYTHONPATH"})


@pytest.mark.skipif(importlib.util.find_spec("nemo_run") is not None, reason="NeMo-Run is installed here")
def test_without_nemo_run_it_says_how_to_get_it():
    out = subprocess.run(
        [sys.executable, str(PATH), "--account", "a", "--partition", "p", "--container-image", "x", "--dryrun"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "pip install nemo-run" in out.stderr
