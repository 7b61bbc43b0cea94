"""Steps per hour, synchronous against asynchronous (docs/async.md), side by side in one run.

    python scripts/bench_async.py                          # latencies 0, 0.5, 2 s; K = sync, 1, 2
    python scripts/bench_async.py --latency 0 0.5 --staleness 0 1 --steps 4

Every configuration is a real ``nemo-craft train`` loop under torchrun (the tiny model, the
static engine, gloo): "colocated" on ``--train-ranks`` ranks, and "disaggregated" on the same
training ranks plus one generation rank, with ``rollout.max_staleness`` K. The environment is the
fault-injecting one (``nemo_craft/envs/faulty.py``) whose every turn sleeps the latency: the
environment time no GPU can hide. A step's time is the median gap between consecutive steps'
metrics, the step's own phases on the trainer's clock (rollout or the wait for the batch, the
log-prob passes, the update and the weights' hand-off), after the first (start-up excluded). The expected ratio of
disaggregated K >= 1 to colocated is about (generation + environment + training) /
max(generation + environment, training), the three measured in the colocated run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "trainer.micro_batch_size=1",
    "rollout.max_tokens_per_episode=24",
    "trainer.val_every=0",
    "logging.progress_bar=false",
    "logging.plot=false",
    "logging.tensorboard=false",
    "trainer.warm_start.steps=0",
    "checkpoint.save_every=0",
]


def rank_body(run_dir: str, latency: float, overrides: list[str]) -> None:
    """One rank of a configuration: the run config with the latency environment, then train."""
    import dataclasses

    from nemo_craft.config import load_run
    from nemo_craft.envs.faulty import FaultyConfig
    from nemo_craft.envs.registry import ENVIRONMENTS, register_env
    from nemo_craft.trainer.trainer import RLTrainer

    if "faulty" not in ENVIRONMENTS:
        register_env("faulty", "nemo_craft.envs.faulty:FaultyEnv")
    run = load_run([*SMALL, f"run_dir={run_dir}", *overrides])
    env_cfg = FaultyConfig(mode="hang" if latency else "ok", hang_s=latency, fail_seeds=None, any_action=True)
    run = dataclasses.replace(run, env=dataclasses.replace(run.env, name="faulty", config=env_cfg))
    RLTrainer(run).fit()


def launch(nproc: int, run_dir: Path, latency: float, overrides: list[str]) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    from nemo_craft.parallel.rendezvous import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    cmd += [__file__, "--rank-body", str(run_dir), str(latency), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return [r for r in rows if "train/loss" in r]


PHASES = ("time/rollout_s", "time/experience_s", "time/train_s")
SHOWN = (*PHASES, "time/train_wait_s", "time/generation_wait_s")


def measure(nproc: int, root: Path, latency: float, overrides: list[str], steps: int) -> dict:
    """Median step time (and phases) of one configuration, steps after the first."""
    run_dir = Path(tempfile.mkdtemp(dir=root))
    rows = launch(nproc, run_dir, latency, [f"trainer.max_steps={steps}", *overrides])[1:]
    step_s = statistics.median(sum(r[k] for k in PHASES) for r in rows)
    phases = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in SHOWN}
    return {"step_s": step_s, "steps_per_hour": 3600.0 / step_s, **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.5, 2.0])
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2], help="0 is the colocated run")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--train-ranks", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_async_"))
    results = []
    head = ("latency_s", "config", "step_s", "steps/h", "x sync", "rollout_s", "train_s", "train_wait_s", "gen_wait_s")
    print(" ".join(f"{h:>12}" for h in head))
    for latency in args.latency:
        base = None
        for k in args.staleness:
            t0 = time.perf_counter()
            if k == 0:
                name, nproc, overrides = "colocated", args.train_ranks, []
            else:
                name, nproc = f"disagg K={k}", args.train_ranks + 1
                overrides = [
                    "rollout.placement=disaggregated",
                    "rollout.generation_ranks=1",
                    f"rollout.max_staleness={k}",
                    "loss.off_policy=tis",
                ]
            m = measure(nproc, root, latency, overrides, args.steps)
            base = base or m["steps_per_hour"]
            m.update(latency_s=latency, config=name, speedup=m["steps_per_hour"] / base)
            m["bench_s"] = time.perf_counter() - t0
            results.append(m)
            cells = [f"{latency:g}", name, f"{m['step_s']:.2f}", f"{m['steps_per_hour']:.0f}", f"{m['speedup']:.2f}"]
            cells += [f"{m[k]:.2f}" for k in (*PHASES[::2], *SHOWN[3:])]
            print(" ".join(f"{c:>12}" for c in cells), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-body":
        rank_body(sys.argv[2], float(sys.argv[3]), sys.argv[4:])
    else:
        main()
