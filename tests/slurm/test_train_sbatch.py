"""``sbatch scripts/slurm/train.sbatch`` through a real SLURM, bare mode, the tiny model at 2 ranks
(parallel=dp, gloo): a USR1 to the batch shell before the time limit -> checkpoint -> exit 75 ->
requeue -> resume -> finish, with the same metrics as an uninterrupted job; a job that fails for
another reason is not requeued; the job log lands in the checkout's logs/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.slurm._jobs import REPO, submit, wait_done

RUN = [
    "parallel=dp",
    "trainer.max_steps=4",
    "trainer.warm_start.steps=0",
    "trainer.val_every=0",
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "trainer.micro_batch_size=2",
    "logging.progress_bar=false",
]
# Only the time limit matters here: --gpus-per-node=0 on a CPU node (NPROC_PER_NODE gives the ranks).
SBATCH = ["--nodes=1", "--gpus-per-node=0", "--time=30"]
TIMED = ("time/", "perf/tokens_per_s")


def _steps(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(TIMED)}


def test_usr1_checkpoints_requeues_and_resumes_to_the_uninterrupted_result(tmp_path, slurm_env):
    env = {**slurm_env, "LOG_DIR": str(tmp_path / "ref_logs")}
    ref = submit([*SBATCH, f"--output={tmp_path}/ref.out", "scripts/slurm/train.sbatch", *RUN,
                  f"run_dir={tmp_path}/ref"], env)  # fmt: skip
    env = {**slurm_env, "LOG_DIR": str(tmp_path / "logs")}
    # the default --output: logs/<job name>-<job id>.out in the checkout (the quick start's path)
    job = submit([*SBATCH, "scripts/slurm/train.sbatch", *RUN, f"run_dir={tmp_path}/run"], env)
    job_log = REPO / "logs" / f"nemo-craft-{job}.out"
    signalled = []

    def usr1_after_the_first_step(record):
        metrics = tmp_path / "run" / "metrics.jsonl"
        if not signalled and record.get("Restarts") == "0" and metrics.exists() and metrics.read_text().strip():
            # what `#SBATCH --signal=B:USR1@...` does before the time limit
            subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True, timeout=30)
            signalled.append(True)

    try:
        wait_done(ref, env, timeout_s=600)
        record = wait_done(job, env, timeout_s=600, every=0.5, on_poll=usr1_after_the_first_step)
        log = job_log.read_text()
    finally:
        job_log.unlink(missing_ok=True)
    assert signalled, log
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", (record, log)
    assert record["Restarts"] == "1", (record, log)
    assert "trainer exit marker: 75; USR1 received: 1" in log and f"requeueing job {job}" in log, log
    assert f"job {job} (restart 1)" in log, log
    steps = _steps(tmp_path / "run")
    assert [s["step"] for s in steps] == [1, 2, 3, 4], "the resumed job appends only the steps after the checkpoint"
    reference = _steps(tmp_path / "ref")
    assert [_untimed(s) for s in steps] == [_untimed(s) for s in reference]


def test_a_job_that_fails_for_another_reason_is_not_requeued(tmp_path, slurm_env):
    env = {**slurm_env, "LOG_DIR": str(tmp_path / "logs")}
    out = tmp_path / "job.out"
    job = submit([*SBATCH, f"--output={out}", "scripts/slurm/train.sbatch", "trainer.max_steps=-1"], env)
    record = wait_done(job, env, timeout_s=300)
    log = out.read_text()
    assert record["JobState"] == "FAILED" and record["Restarts"] == "0", (record, log)
    assert "trainer.max_steps=-1" in log and "requeueing" not in log, log


def test_account_and_partition_come_from_the_environment_of_sbatch(slurm_env):
    """SBATCH_PARTITION / SBATCH_ACCOUNT are the one place for them (train and sweep alike)."""
    out = subprocess.run(
        ["sbatch", "--test-only", *SBATCH, "scripts/slurm/train.sbatch"],
        env={**slurm_env, "SBATCH_PARTITION": "no_such_partition"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "partition" in out.stderr.lower(), out.stderr
