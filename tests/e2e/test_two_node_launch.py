"""Two "nodes" on this machine through the sbatch template's own launcher: two torchrun agents
(scripts/slurm/launch.sh, as srun starts them, one per node) meet at one c10d rendezvous on
127.0.0.1 and run `python -m nemo_craft train` on 2 x 2 ranks at TP=2, DP=2 (gloo) for two
steps; then a stop request (the file the sbatch trap touches on SIGUSR1) makes every rank save
and exit with the preemption code, and a relaunch with the same command resumes from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_craft.testing.distributed import free_port
from nemo_craft.trainer.preemption import EXIT_MARKER_ENV, PREEMPTION_EXIT_CODE, STOP_FILE_ENV
from tests.e2e._bodies_train import SMALL

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "scripts" / "slurm" / "launch.sh"
TIMEOUT_S = 1500


def _torchrun(tmp_path: Path) -> str:
    """A torchrun executable of this interpreter (the venv's, or a wrapper around it)."""
    exe = Path(sys.executable).parent / "torchrun"
    if exe.exists():
        return str(exe)
    wrapper = tmp_path / "torchrun"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _launch_two_nodes(tmp_path: Path, job_id: str, overrides: list[str], extra_env: dict | None = None):
    """Start both nodes' agents exactly as train.sbatch's srun does; return their exit codes."""
    port = free_port()
    procs = []
    for node in (0, 1):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "TORCHELASTIC_"))
            and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        }
        env.update(
            SLURM_JOB_ID=job_id,
            SLURM_NNODES="2",
            SLURM_NODEID=str(node),
            SLURM_RESTART_COUNT="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            GPUS_PER_NODE="2",
            LOG_DIR=str(tmp_path / "logs"),
            TORCHRUN=_torchrun(tmp_path),
            PYTHONPATH=str(REPO),
            CUDA_VISIBLE_DEVICES="",
            OMP_NUM_THREADS="1",
            **(extra_env or {}),
        )
        log = open(tmp_path / f"node{node}.{job_id}.log", "w")
        procs.append(
            (
                subprocess.Popen(
                    ["bash", str(LAUNCH), *overrides], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    codes = []
    try:
        for proc, log in procs:
            codes.append(proc.wait(timeout=TIMEOUT_S))
            log.close()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
    return codes


def _tail(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("node*.log")))


def _overrides(run_dir: Path, max_steps: int) -> list[str]:
    # conf/parallel/tp2.yaml: TP=2 with sequence parallel, the distributed optimizer and
    # overlapped grad reduce / param gather.
    return [*SMALL, "parallel=tp2", f"trainer.max_steps={max_steps}", "checkpoint.save_every=0", f"run_dir={run_dir}"]


def test_two_torchrun_agents_one_rendezvous_tp2_dp2(tmp_path):
    run_dir = tmp_path / "run"
    codes = _launch_two_nodes(tmp_path, "101", _overrides(run_dir, 2))
    assert codes == [0, 0], _tail(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["train/step_ok"] == 1.0 for r in rows)
    # per-rank logs: torchrun's --log-dir of each node holds its two local ranks' stdout/stderr
    for node in (0, 1):
        logs = sorted((tmp_path / "logs" / "attempt0" / f"node{node}").rglob("stdout.log"))
        assert len(logs) == 2, logs
    # the final checkpoint records the layout the four ranks ran
    meta = json.loads(next(run_dir.rglob("meta.json")).read_text())
    assert {k: meta["layout"][k] for k in ("world_size", "tp", "pp", "dp")} == dict(world_size=4, tp=2, pp=1, dp=2)


def test_stop_request_checkpoints_exits_75_and_the_relaunch_resumes(tmp_path):
    run_dir = tmp_path / "run"
    stop, marker = tmp_path / "stop", tmp_path / "exit.json"
    stop.touch()  # as if SIGUSR1 had reached the batch shell: every rank stops after step 1
    env = {STOP_FILE_ENV: str(stop), EXIT_MARKER_ENV: str(marker)}
    codes = _launch_two_nodes(tmp_path, "102", _overrides(run_dir, 3), env)
    assert all(code != 0 for code in codes), _tail(tmp_path)  # torchrun reports the workers' exit as a failure
    record = json.loads(marker.read_text())
    assert record["exit_code"] == PREEMPTION_EXIT_CODE and record["reason"] == "stop file"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]

    stop.unlink()  # the requeued job: same command, checkpoint.resume=auto (launch.sh adds it)
    marker.unlink()
    codes = _launch_two_nodes(tmp_path, "103", _overrides(run_dir, 3), env)
    assert codes == [0, 0], _tail(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [2, 3]
    assert not marker.exists()
