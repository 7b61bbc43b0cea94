"""The RL step of the tiny mixture of experts beside a dense model of the same active size.

    python scripts/bench_moe.py                 # CPU, one rank, 3 timed steps each
    python scripts/bench_moe.py --quick         # one timed step each of 4 short episodes (the smoke test's)
    python scripts/bench_moe.py --json out.json

The dense model is the tiny MoE's attention with one MLP as wide as the experts a token passes
through (top-k x the expert width), so both do the same matrix work per token apart from the
router; the MoE pays for the router, the permutation around its experts and the all-to-all
dispatcher. Both trainers live in one process and their steps alternate (one discarded warm-up
step each), so that drift of the machine falls on both alike. Prints seconds per phase (median),
tokens/s, and MoE / dense for the step and per token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_craft.testing.distributed import run_distributed  # noqa: E402

BASE = [
    "trainer.warm_start.steps=0",
    "trainer.val_every=0",
    "checkpoint.dir=null",
    "checkpoint.save_every=0",
    "logging.tensorboard=false",
    "logging.jsonl=false",
    "logging.progress_bar=false",
    "logging.plot=false",
    "run_dir=/tmp/nemo_craft_bench_moe",
]
# --quick: a handful of short episodes, so that the smoke test takes seconds
QUICK = [
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "trainer.micro_batch_size=1",
    "rollout.generation.max_new_tokens=8",
    "rollout.max_tokens_per_episode=24",
    "env.config.max_turns=3",
]
PHASES = ("rollout_s", "experience_s", "train_s")


def _models() -> dict[str, list[str]]:
    """name -> overrides: the tiny MoE, and a dense model of its active size."""
    from nemo_craft.config import compose

    moe = compose(["model=qwen3_moe_tiny"]).model
    width = moe.moe_router_topk * moe.moe_ffn_hidden_size
    return {"moe": ["model=qwen3_moe_tiny"], "dense": ["model=tiny", f"model.ffn_hidden_size={width}"]}


def _bench(models: dict, repeats: int) -> dict:
    from nemo_craft.config import load_run
    from nemo_craft.planner.meta_build import estimate_stages
    from nemo_craft.trainer.trainer import RLTrainer

    trainers, out = {}, {}
    for name, overrides in models.items():
        trainers[name] = RLTrainer(load_run(BASE + overrides))
        trainers[name].setup()
        run = trainers[name].run
        (stage,) = estimate_stages(run.model, run.parallel)
        m = run.model
        unused = stage.expert_params * (m.num_experts - m.moe_router_topk) // m.num_experts if m.num_experts else 0
        out[name] = {"params": stage.params, "active_params": stage.params - unused, "steps": []}
    for r in range(repeats + 1):
        for name, trainer in trainers.items():
            t = time.perf_counter()
            metrics = trainer.train_step()
            row = {k: metrics[f"time/{k}"] for k in PHASES}
            row["step_s"] = time.perf_counter() - t
            row["tokens"] = metrics["perf/tokens_per_s"] * (
                metrics["time/rollout_s"] + metrics["time/experience_s"] + metrics["time/train_s"]
            )
            if r:  # the first step of each warms up
                out[name]["steps"].append(row)
    for res in out.values():
        res["median"] = {k: statistics.median(s[k] for s in res["steps"]) for k in (*PHASES, "step_s", "tokens")}
    for trainer in trainers.values():
        trainer.runner.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one timed step each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    models = {k: (QUICK if args.quick else []) + v for k, v in _models().items()}
    res = run_distributed(_bench, world_size=1, timeout=3000, args=(models, repeats))[0]
    print(
        f"{'model':<6} {'params':>9} {'active':>9} {'rollout':>8} {'exper.':>7} {'train':>7} {'step':>7} {'tok/s':>7}"
    )
    for name, r in res.items():
        m = r["median"]
        print(
            f"{name:<6} {r['params']:>9,} {r['active_params']:>9,} {m['rollout_s']:8.3f} {m['experience_s']:7.3f} "
            f"{m['train_s']:7.3f} {m['step_s']:7.3f} {m['tokens'] / m['step_s']:7.0f}"
        )
    moe, dense = res["moe"]["median"], res["dense"]["median"]
    step_ratio = moe["step_s"] / dense["step_s"]
    token_ratio = (moe["step_s"] / moe["tokens"]) / (dense["step_s"] / dense["tokens"])
    train_ratio = (moe["experience_s"] + moe["train_s"]) / (dense["experience_s"] + dense["train_s"])
    print(
        f"MoE / dense: step {step_ratio:.2f}x, per token {token_ratio:.2f}x, "
        f"experience + train {train_ratio:.2f}x (median of {repeats} step(s) each, after one warm-up)"
    )
    if args.json:
        res["ratio"] = {"step": step_ratio, "per_token": token_ratio, "experience_train": train_ratio}
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
