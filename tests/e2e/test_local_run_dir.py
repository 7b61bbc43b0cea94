"""A local ``nemo-craft train``: Ctrl-C checkpoints at the step boundary (exit 75); a second run
into the same run directory is refused in one line unless it resumes (checkpoint.resume=auto),
and the resumed run's metrics.jsonl holds every step once; every metric key it logged is
described in docs/outputs.md."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = [
    "trainer.max_steps=5",
    "trainer.warm_start.steps=2",
    "trainer.val_every=5",
    "trainer.val_tasks=2",
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "trainer.micro_batch_size=2",
    "logging.progress_bar=false",
]


def _train(run_dir: Path, *extra: str, sigint_after_step: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nemo_craft", "train", *RUN, f"run_dir={run_dir}", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEMO_CRAFT_")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sigint_after_step is not None:
        metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
            if steps and max(steps) >= sigint_after_step:
                proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
                break
            time.sleep(0.1)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _documented_keys() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", (REPO / "docs" / "outputs.md").read_text(), flags=re.M))


def test_ctrl_c_checkpoints_a_second_run_resumes_or_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    first = _train(run_dir, sigint_after_step=1)
    assert first.returncode == 75, first.stderr[-3000:]
    stopped = re.search(r"stopped after step (\d) \(SIGINT\)", first.stdout)
    assert stopped and int(stopped.group(1)) < 5, first.stdout[-3000:]
    step = int(stopped.group(1))
    assert (run_dir / "checkpoints" / f"step_{step:06d}" / "COMPLETE").is_file()

    again = _train(run_dir)  # a fresh start into the same directory
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1, again.stderr[-3000:]
    assert f"run_dir={run_dir} already holds a run" in lines[0] and "checkpoint.resume=auto" in lines[0]

    resumed = _train(run_dir, "checkpoint.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 5], "every step once: the resumed run continues, never restarts"

    logged = {k for r in records for k in r if k != "step"}
    missing = sorted(logged - _documented_keys())
    assert not missing, f"metric keys logged but not described in docs/outputs.md: {missing}"
