"""train.sbatch's requeue decision, run for real with stand-ins for srun and scontrol: requeued
when the trainer stopped for preemption (exit code 75, or its marker behind torchrun's 1, or a
SIGUSR1 to the batch shell that ended in a stop), left alone after success or a plain crash."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"

# srun stand-in: FAKE_SRUN says how the "training" ends.
FAKE_SRUN = r"""#!/bin/bash
echo "srun $*" >> "$FAKE_CALLS"
case "$FAKE_SRUN" in
  ok) exit 0 ;;
  crash) exit 1 ;;
  code75) exit 75 ;;
  marker) echo '{"exit_code": 75, "reason": "SIGTERM", "step": 4}' > "$NEMO_CRAFT_EXIT_MARKER"; exit 1 ;;
  wait_stop)  # the ranks poll the stop file at their step boundaries
    for _ in $(seq 600); do
      if [[ -f "$NEMO_CRAFT_STOP_FILE" ]]; then
        echo '{"exit_code": 75, "reason": "stop file", "step": 2}' > "$NEMO_CRAFT_EXIT_MARKER"; exit 1
      fi
      sleep 0.05
    done
    exit 3 ;;
esac
"""
FAKE_SCONTROL = r"""#!/bin/bash
echo "scontrol $*" >> "$FAKE_CALLS"
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu-001\ngpu-002\n'; fi
"""


def _run(tmp_path: Path, mode: str, restart: int = 0, usr1: bool = False) -> tuple[int, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NEMO_CRAFT_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        FAKE_CALLS=str(calls),
        FAKE_SRUN=mode,
        CODE_DIR=str(REPO),
        LOG_DIR=str(tmp_path / "logs"),
        SLURM_JOB_ID="777",
        SLURM_JOB_NODELIST="gpu-[001-002]",
        SLURM_NNODES="2",
        SLURM_RESTART_COUNT=str(restart),
        CONTAINER_IMAGE="/c.sqsh",
    )
    proc = subprocess.Popen(
        ["bash", str(SBATCH), "+recipe=qwen3_8b_2nodes"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if usr1:
        deadline = time.monotonic() + 30
        while not (calls.exists() and "srun" in calls.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, calls.read_text().splitlines(), out


@pytest.mark.parametrize(
    "mode,requeued,code",
    [
        ("ok", False, 0),
        ("crash", False, 1),
        ("code75", True, 0),
        ("marker", True, 0),
    ],
)
def test_requeue_decision(tmp_path, mode, requeued, code):
    rc, calls, out = _run(tmp_path, mode)
    assert rc == code, out
    assert ("scontrol requeue 777" in calls) == requeued, calls
    (srun,) = [c for c in calls if c.startswith("srun ")]
    assert "--container-image=/c.sqsh" in srun and "bash scripts/slurm/launch.sh +recipe=qwen3_8b_2nodes" in srun
    assert f"--container-mounts={REPO}:/workspace/nemo_craft,{tmp_path}/logs:{tmp_path}/logs" in srun


def test_usr1_to_the_batch_shell_stops_the_ranks_through_the_stop_file_and_requeues(tmp_path):
    rc, calls, out = _run(tmp_path, "wait_stop", usr1=True)
    assert rc == 0, out
    assert "SIGUSR1: asking every rank" in out and "scontrol requeue 777" in calls


def test_no_requeue_after_max_requeues(tmp_path):
    rc, calls, out = _run(tmp_path, "code75", restart=20)
    assert rc == 75 and "scontrol requeue 777" not in calls
    assert "reached MAX_REQUEUES=20" in out
