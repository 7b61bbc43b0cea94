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


def _run(
    tmp_path: Path, mode: str, restart: int = 0, usr1: bool = False, args=("+recipe=qwen3_8b_2nodes",), **settings
) -> tuple[int, list[str], str]:
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
        SLURM_GPUS_ON_NODE="8",
        CONTAINER_IMAGE="/c.sqsh",
    )
    env.update(settings)
    proc = subprocess.Popen(
        ["bash", str(SBATCH), *args],
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
    return proc.returncode, calls.read_text().splitlines() if calls.exists() else [], out


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


def _srun(calls: list[str]) -> str:
    (srun,) = [c for c in calls if c.startswith("srun ")]
    return srun


def test_absolute_paths_of_the_overrides_are_mounted_at_the_same_path(tmp_path):
    weights = tmp_path / "hf" / "Qwen3-8B"
    weights.mkdir(parents=True)
    corpus = tmp_path / "data" / "wiki.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("{}\n")
    args = (f"model.hf_path={weights}", f"env.config.corpus_path={corpus}", "env=search_qa")
    rc, calls, out = _run(tmp_path, "ok", args=args)
    assert rc == 0, out
    mounts = _srun(calls).split("--container-mounts=")[1].split()[0].split(",")
    assert f"{weights}:{weights}" in mounts and f"{corpus.parent}:{corpus.parent}" in mounts, mounts


def test_a_path_missing_on_the_node_stops_the_job_before_srun_naming_extra_mounts(tmp_path):
    rc, calls, out = _run(tmp_path, "ok", args=("model.hf_path=/lustre/nowhere/Qwen3-8B",))
    assert rc == 2 and not [c for c in calls if c.startswith("srun ")], out
    assert "model.hf_path=/lustre/nowhere/Qwen3-8B" in out and "EXTRA_MOUNTS" in out, out
    # under an EXTRA_MOUNTS destination it is the user's mount that makes it visible
    rc, calls, out = _run(
        tmp_path, "ok", args=("model.hf_path=/lustre/nowhere/Qwen3-8B",), EXTRA_MOUNTS="/site/lustre:/lustre"
    )
    assert rc == 0 and "/site/lustre:/lustre" in _srun(calls), out


def test_bare_mode_differs_only_in_the_container_flags(tmp_path):
    rc, calls, out = _run(tmp_path, "ok", CONTAINER_IMAGE="none")
    assert rc == 0, out
    srun = _srun(calls)
    assert "--container" not in srun, srun
    launch = "bash scripts/slurm/launch.sh +recipe=qwen3_8b_2nodes"
    assert srun == f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 --chdir={REPO} {launch}"


def test_ranks_per_node_without_a_gpu_come_from_nproc_per_node(tmp_path):
    rc, calls, out = _run(tmp_path, "ok", SLURM_GPUS_ON_NODE="0")
    assert rc == 2 and "NPROC_PER_NODE" in out and not calls, out
    rc, calls, out = _run(tmp_path, "ok", SLURM_GPUS_ON_NODE="0", NPROC_PER_NODE="2")
    assert rc == 0 and "x 2 GPUs" in out, out
