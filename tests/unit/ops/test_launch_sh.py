"""scripts/slurm/launch.sh builds one node's torchrun command from SLURM's variables."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
LAUNCH = REPO / "scripts" / "slurm" / "launch.sh"

SLURM = dict(
    SLURM_JOB_ID="4242",
    SLURM_NNODES="4",
    SLURM_NODEID="2",
    SLURM_RESTART_COUNT="1",
    SLURM_GPUS_ON_NODE="8",
    MASTER_ADDR="gpu-node-007",
    MASTER_PORT="24242",
    LOG_DIR="/lustre/logs/4242",
)


def _launch(env: dict, *overrides: str, path_prepend: Path | None = None) -> subprocess.CompletedProcess:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM_")
        and k not in ("MASTER_ADDR", "MASTER_PORT", "LOG_DIR", "GPUS_PER_NODE", "TORCHRUN")
    }
    environ.update(env, DRY_RUN="1")
    if path_prepend is not None:
        environ["PATH"] = f"{path_prepend}:{environ['PATH']}"
    return subprocess.run(["bash", str(LAUNCH), *overrides], env=environ, capture_output=True, text=True, timeout=30)


def test_dry_run_prints_the_exact_torchrun_command():
    out = _launch(SLURM, "+recipe=qwen2p5_72b_4nodes", "env=search_qa", "method=craft")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "torchrun --nnodes=4 --nproc-per-node=8 --node-rank=2 --rdzv-backend=c10d "
        "--rdzv-endpoint=gpu-node-007:24242 --rdzv-id=4242 --max-restarts=0 "
        "--log-dir=/lustre/logs/4242/attempt1/node2 --redirects=3 --tee=3 "
        "-m nemo_craft train checkpoint.resume=auto +recipe=qwen2p5_72b_4nodes env=search_qa method=craft\n"
    )


def test_master_addr_comes_from_the_first_host_of_the_nodelist(tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-[011-012]" ] && printf "gpu-011\\ngpu-012\\n"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in SLURM.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOG_DIR", "SLURM_GPUS_ON_NODE")}
    env.update(SLURM_JOB_NODELIST="gpu-[011-012]", SLURM_NNODES="2", SLURM_NODEID="0")
    env.pop("SLURM_RESTART_COUNT")
    out = _launch(env, "a=b c", path_prepend=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "torchrun --nnodes=2 --nproc-per-node=8 --node-rank=0 --rdzv-backend=c10d "
        "--rdzv-endpoint=gpu-011:29500 --rdzv-id=4242 --max-restarts=0 "
        "--log-dir=logs/4242/attempt0/node0 --redirects=3 --tee=3 "
        "-m nemo_craft train checkpoint.resume=auto a=b\\ c\n"
    )  # shell-quoted: one argument


@pytest.mark.parametrize("missing", ["SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID"])
def test_outside_slurm_it_says_which_variable_is_missing(missing):
    env = {k: v for k, v in SLURM.items() if k != missing}
    out = _launch(env)
    assert out.returncode != 0 and missing in out.stderr
