"""``nemo-craft evaluate [overrides...] [checkpoint.resume=PATH] [--split val|test] [--out DIR] [--tasks N]``

Roll out an environment's validation or test split with a checkpoint (or, without one, the
initial / ``model.hf_path`` weights) at ``rollout.validation.temperature`` (0.4), one episode a task,
and report success rate, mean score, mean turns and the environment's numbers as the paper
reports them (ALFWorld success, Search-QA exact match, WebShop score and success), as
``results.json``, ``episodes.jsonl`` and ``results.md`` in the output directory, and a printed table.

    nemo-craft evaluate checkpoint.resume=outputs/craft_sokoban_seed1234/checkpoints --split test
    nemo-craft evaluate env=search_qa model=qwen3_1p7b model.hf_path=/ckpt/Qwen3-1.7B --tasks 128
    torchrun --nproc-per-node=8 -m nemo_craft evaluate checkpoint.resume=... parallel=dp

With a checkpoint, the run's config is the checkpoint's (see ``nemo_craft.eval.evaluator``) and
the overrides change it (e.g. ``parallel=single`` to evaluate a TP8 checkpoint on one device).
The split's tasks: ``nemo_craft.eval.splits``. Default output directory:
``<run_dir>/eval/<split>_step<N>`` (``<split>_init`` without a checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nemo-craft evaluate",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overrides", nargs="*", help="config overrides key=value (checkpoint.resume=PATH picks the checkpoint)"
    )
    p.add_argument("--split", choices=("val", "test"), default="val", help="the environment's split (default: val)")
    p.add_argument("--out", default=None, help="output directory (default: <run_dir>/eval/<split>_step<N>)")
    p.add_argument("--tasks", type=int, default=None, help="number of tasks (default: trainer.val_tasks)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    from nemo_craft.config import load_eval_run
    from nemo_craft.envs.registry import MissingEngineError
    from nemo_craft.eval.evaluator import Evaluator, write_results
    from nemo_craft.parallel.initialize import destroy_parallel
    from nemo_craft.parallel.rendezvous import single_process_env

    single_process_env()
    try:  # a user's mistake: one line naming the value, before any process group
        run, info = load_eval_run(args.overrides)
        evaluator = Evaluator(run, args.split, n_tasks=args.tasks)
    except (ValueError, MissingEngineError) as err:
        print(f"nemo-craft evaluate: {err}", file=sys.stderr)
        return 2
    try:
        result = evaluator.run()
    finally:
        evaluator.close()
    if evaluator.rank == 0:
        tag = f"step{info.step}" if info is not None else "init"
        out = Path(args.out) if args.out else Path(run.run_dir) / "eval" / f"{args.split}_{tag}"
        paths = write_results(result, out)
        print(paths["markdown"].read_text(), end="")
        print(f"[nemo_craft] evaluation written to {out} ({', '.join(p.name for p in paths.values())})", flush=True)
    destroy_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
