"""Submitting to and waiting on the test cluster (tests/slurm/conftest.py says where it is)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def slurm_conf() -> str:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    return str(Path(os.environ.get("NEMO_CRAFT_SLURM_DIR", "/tmp/nemo_craft_slurm")) / "slurm.conf")


def slurm_problem() -> str | None:
    """Why no SLURM can take a job here (None: a node is up)."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (apt-get install slurmctld slurmd slurm-client munge)"
    conf = slurm_conf()
    if not Path(conf).is_file():
        return f"no SLURM config at {conf} (start a cluster: bash .ci/slurm.sh start)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"],
            env={**os.environ, "SLURM_CONF": conf},
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return f"sinfo with SLURM_CONF={conf} did not answer in 20 s"
    states = out.stdout.split()
    if out.returncode or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return f"no SLURM node up (SLURM_CONF={conf}: {out.stdout.strip() or out.stderr.strip()})"
    return None


def submit(args: list[str], env: dict, cwd: Path = REPO) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_record(job: str, env: dict) -> dict:
    """``scontrol show job`` as a dict (the controller keeps a finished job for MinJobAge, 300 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def wait_done(job: str, env: dict, timeout_s: float, every: float = 1.0, on_poll=None) -> dict:
    """Poll until the job (or every task of an array) has left the queue; returns its record.
    ``on_poll(record)`` runs at each poll (to signal the job at the right moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True, timeout=30)
        record = job_record(job, env)
        if on_poll is not None:
            on_poll(record)
        if queued.returncode == 0 and not queued.stdout.strip():
            return record
        time.sleep(every)
    subprocess.run(["scancel", job], env=env, timeout=30)
    pytest.fail(f"job {job} did not finish in {timeout_s:.0f} s: {job_record(job, env)}")
