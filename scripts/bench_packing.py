"""Tokens/s of each pass of an RL step, padded micro-batches vs packed ones, side by side.

    python scripts/bench_packing.py                          # Search-QA episodes of the tiny model
    python scripts/bench_packing.py --tasks 8 --group-size 8 --repeats 5
    python scripts/bench_packing.py --env sokoban --model tiny_x10   # Sokoban, a ~10x larger model
    python scripts/bench_packing.py --device cuda            # on a GPU

Builds one step of multi-turn Search-QA episodes (by default): the environment's expert
episodes (``--episodes expert``: searches, each answered with retrieved passages, then the answer,
as a policy that solves the task acts; their number of searches varies with the task, and so do
the lengths), tokenized for the tiny model with the teacher's privileged prompt; or the untrained
tiny model's own rollouts (``--episodes rollout``: it never answers, so every episode runs to
the turn limit and the lengths barely differ). It runs the step's four
passes on the same weights, padded (``trainer.micro_batch_size`` sequences a micro-batch, each as
long as the longest) and packed (``trainer.max_tokens_per_microbatch``, by default the same
number of tokens as one padded micro-batch of the teacher pass), interleaved, one warm-up round
discarded, medians of ``--repeats``. Tokens/s counts the real tokens of a pass (the same number
both ways), so the ratio is the speed-up; the padding columns are the share of computed tokens
that were padding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_craft.testing.distributed import run_distributed  # noqa: E402

BASE = [
    "model=tiny",
    "trainer.warm_start.steps=0",
    "trainer.val_every=0",
    "checkpoint.dir=null",
    "checkpoint.save_every=0",
    "logging.tensorboard=false",
    "logging.jsonl=false",
    "logging.progress_bar=false",
    "logging.plot=false",
    "run_dir=/tmp/nemo_craft_bench_packing",
]
PASSES = ("old", "teacher", "ref", "train")
MODELS = {  # as scripts/bench_step.py
    "tiny": [],
    "tiny_x10": ["model.num_layers=8", "model.hidden_size=256", "model.ffn_hidden_size=768", "model.kv_channels=64"],
}


def _bench(
    model: str,
    env: str,
    tasks: int,
    group_size: int,
    micro_batch_size: int,
    budget: int | None,
    repeats: int,
    episodes: str,
) -> dict:
    import torch

    from nemo_craft.config import load_run
    from nemo_craft.trainer.trainer import RLTrainer

    run = load_run(
        BASE
        + MODELS[model]
        + [
            f"env={env}",
            f"rollout.tasks_per_step={tasks}",
            f"rollout.group_size={group_size}",
            f"trainer.micro_batch_size={micro_batch_size}",
        ]
    )
    trainer = RLTrainer(run)
    trainer.setup()
    if episodes == "expert":
        trajs = _expert_episodes(trainer, tasks * group_size, group_size)
    else:
        trajs = trainer.runner.run(trainer._task_seeds()[0], seed=0)
    trainer.runner.close()
    student = [len(t) - 1 for t in trajs]
    teacher = [len(t.teacher_token_ids()) - 1 for t in trajs]
    if budget is None:  # one padded teacher micro-batch's tokens
        budget = micro_batch_size * -(-max(teacher) // 64) * 64
    tokens = {"old": sum(student), "teacher": sum(teacher), "ref": sum(student), "train": sum(student)}
    seconds = {mode: {p: [] for p in PASSES} for mode in ("padded", "packed")}
    padding = {}
    for r in range(repeats + 1):
        for mode, max_tokens in (("padded", None), ("packed", budget)):
            t, pad = _one_step(trainer, trajs, max_tokens)
            padding[mode] = pad
            if r:
                for p in PASSES:
                    seconds[mode][p].append(t[p])
    return dict(
        budget=budget,
        threads=torch.get_num_threads(),
        lengths=dict(student=sorted(student), teacher=sorted(teacher)),
        tokens=tokens,
        seconds={m: {p: statistics.median(v) for p, v in s.items()} for m, s in seconds.items()},
        padding=padding,
    )


def _expert_episodes(trainer, n: int, group_size: int) -> list:
    """The environment's expert episodes of tasks 0..n-1 as trajectories, with the teacher's
    privileged prompt; ``group_size`` consecutive tasks share a group (for the advantages)."""
    from nemo_craft.rollout.conversation import ChatFormat
    from nemo_craft.rollout.trajectory import Trajectory

    tok = trainer.tokenizer
    fmt = ChatFormat(tok, system_prompt=trainer.run.rollout.system_prompt, end_of_turn_ids=tok.stop_ids)
    env = trainer.run.env.factory()()
    out = []
    try:
        for seed in range(n):
            _, priv, _ = env.reset(seed)
            prompt = env.render_prompt()
            tr = Trajectory(task_seed=seed, group_id=seed // group_size, sibling_index=seed % group_size)
            tr.append(fmt.prompt_ids(prompt))
            tr.prompt_length = len(tr)
            tr.teacher_prompt_ids = fmt.teacher_prompt_ids(prompt, env.render_privileged(priv))
            for turn, action in enumerate(env.expert_actions()):
                ids = tok.encode(action) + [tok.stop_ids[0]]
                tr.append(ids, turn=turn, logprobs=[0.0] * len(ids))
                obs, reward, done, _ = env.step(action)
                tr.reward += reward
                tr.num_turns = turn + 1
                if done:
                    break
                tr.append(fmt.continuation_ids(ids, obs))
            out.append(tr)
    finally:
        env.close()
    return out


def _one_step(trainer, trajs, max_tokens) -> tuple[dict, dict]:
    from nemo_craft.losses import LossConfig
    from nemo_craft.trainer.experience import make_experience
    from nemo_craft.trainer.megatron_step import forward_backward
    from nemo_craft.trainer.step import training_loss_fn

    cfg = LossConfig.preset("craft")  # reads the teacher: all four passes run
    exp = make_experience(
        trainer.model,
        trainer.reference,
        trajs,
        cfg,
        pad_id=trainer.tokenizer.pad_id,
        micro_batch_size=trainer.run.trainer.micro_batch_size,
        pad_to_multiple_of=1,
        max_tokens_per_microbatch=max_tokens,
        dp_group=trainer.dp_group,
        sample_offset=0,
        device=trainer.device,
        vocab_size=trainer.vocab_size,
        old_pass=True,
    )
    mbs = exp.train_micro_batches(trainer.run.trainer.micro_batch_size, max_tokens)
    loss_fn = training_loss_fn(exp.batch, exp.targets, cfg, trainer.controller, vocab_size=trainer.vocab_size)
    _sync(trainer.device)
    t0 = time.perf_counter()
    forward_backward(trainer.model, mbs.items, loss_fn, trainer.optimizer)  # no update: same weights next time
    _sync(trainer.device)
    seconds = {p: exp.timings[f"time/{p}_logprobs_s"] for p in ("old", "teacher", "ref")}
    seconds["train"] = time.perf_counter() - t0
    padding = {p: exp.padding[f"perf/pad_frac_{p}"] for p in ("old", "teacher", "ref")}
    padding["train"] = mbs.pad_fraction
    return seconds, padding


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _quantiles(xs: list[int]) -> str:
    return f"min {xs[0]}, median {xs[len(xs) // 2]}, max {xs[-1]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="search_qa")
    ap.add_argument("--model", choices=list(MODELS), default="tiny")
    ap.add_argument("--tasks", type=int, default=8, help="rollout.tasks_per_step")
    ap.add_argument("--group-size", type=int, default=8, help="rollout.group_size")
    ap.add_argument("--micro-batch-size", type=int, default=4, help="the padded run's trainer.micro_batch_size")
    ap.add_argument("--budget", type=int, default=None, help="trainer.max_tokens_per_microbatch of the packed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--episodes", choices=["expert", "rollout"], default="expert")
    args = ap.parse_args()
    res = run_distributed(
        _bench,
        world_size=1,
        timeout=3000,
        device=args.device,
        args=(
            args.model,
            args.env,
            args.tasks,
            args.group_size,
            args.micro_batch_size,
            args.budget,
            args.repeats,
            args.episodes,
        ),
    )[0]
    n = len(res["lengths"]["student"])
    print(
        f"{args.env}, {args.model} model, {n} {args.episodes} episodes, {res['threads']} threads, "
        f"device {args.device}; "
        f"padded: micro_batch_size={args.micro_batch_size}; packed: max_tokens_per_microbatch={res['budget']}"
    )
    print(f"student tokens per episode: {_quantiles(res['lengths']['student'])}")
    print(f"teacher tokens per episode: {_quantiles(res['lengths']['teacher'])}")
    print(
        f"{'pass':<8} {'tokens':>7} {'padded tok/s':>13} {'packed tok/s':>13} {'packed/padded':>14} "
        f"{'pad% padded':>12} {'pad% packed':>12}"
    )
    total = {"padded": 0.0, "packed": 0.0}
    for p in PASSES:
        s_pad, s_pack = res["seconds"]["padded"][p], res["seconds"]["packed"][p]
        total["padded"] += s_pad
        total["packed"] += s_pack
        tok = res["tokens"][p]
        print(
            f"{p:<8} {tok:>7} {tok / s_pad:>13.0f} {tok / s_pack:>13.0f} {s_pad / s_pack:>13.2f}x "
            f"{100 * res['padding']['padded'][p]:>11.1f}% {100 * res['padding']['packed'][p]:>11.1f}%"
        )
    print(
        f"all four passes: padded {total['padded']:.2f} s, packed {total['packed']:.2f} s, "
        f"{total['padded'] / total['packed']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
