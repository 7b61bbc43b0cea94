"""``nemo-craft sweep SPEC --slurm`` through a real SLURM: two array tasks of
scripts/slurm/sweep_array.sbatch (bare mode, the partition from SBATCH_PARTITION), each writing
its run's done.json, and ``--collect`` tables both runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tests.slurm._jobs import REPO, wait_done

SPEC = """
name: slurm_test
out_dir: {out}
methods: [grpo, craft]
envs: {{sokoban: {{overrides: []}}}}
models: {{tiny: {{overrides: [], nodes: 1}}}}
seeds: [1]
ablation: [craft]
overrides: [trainer.max_steps=2, trainer.warm_start.steps=0, trainer.val_every=2, trainer.val_tasks=4,
            rollout.tasks_per_step=2, rollout.group_size=2, trainer.micro_batch_size=2, logging.progress_bar=false]
slurm: {{time: "00:30:00", sbatch_args: [--gpus-per-node=0]}}
"""


def test_two_array_tasks_run_and_collect_tables_them(tmp_path, slurm_env):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC.format(out=tmp_path / "sweep"))
    env = {**slurm_env, "NPROC_PER_NODE": "1", "SBATCH_PARTITION": "batch"}
    sweep = [sys.executable, "-m", "nemo_craft", "sweep", str(spec)]
    out = subprocess.run([*sweep, "--slurm"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = re.findall(r"Submitted batch job (\d+)", out.stdout)
    try:
        wait_done(job, env, timeout_s=600)
    finally:  # each array task's per-rank logs: logs/<array job>_<task> in the checkout
        for task_logs in (REPO / "logs").glob(f"{job}_*"):
            shutil.rmtree(task_logs, ignore_errors=True)
    runs = sorted((tmp_path / "sweep" / "runs").glob("sokoban/tiny/*/seed1"))
    assert [r.parent.name for r in runs] == ["craft", "grpo"]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / "slurm").glob("*.out"))
    assert all((r / "done.json").is_file() for r in runs), logs
    out = subprocess.run([*sweep, "--collect"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    table = (tmp_path / "sweep" / "results" / "results.md").read_text()
    assert "2 of 2 runs finished." in table, table
    assert re.search(r"^\| GRPO \| \d+\.\d ± \d+\.\d \|$", table, flags=re.M), table
    assert re.search(r"^\| CRAFT \| \d+\.\d ± \d+\.\d \|$", table, flags=re.M), table
