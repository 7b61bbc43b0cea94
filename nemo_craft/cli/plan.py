"""``nemo-craft plan``: check a parallel layout and its memory on paper, before asking for GPUs.

    nemo-craft plan model=qwen3_8b parallel=tp2 cluster=h100_1node
    nemo-craft plan +recipe=qwen2p5_72b_4nodes plan.seq_length=8192 --json

Takes the same Hydra overrides as ``nemo-craft train`` (plus ``plan.*``, the workload
assumptions of :class:`~nemo_craft.planner.config.Workload`), builds every pipeline rank's
model chunks on the meta device and prints, per rank, the parameters and the memory of each
term, against the GPU's memory. Exit status: 0 when the layout runs and fits, 1 when it is
refused (the reason and a layout that would fit are printed), 2 for a bad command line or config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Optional

__all__ = ["main", "plan_from_overrides"]

_USAGE = "nemo-craft plan [--json] [--no-suggest] [overrides...]"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nemo-craft plan",
        usage=_USAGE,
        description="Parameters and memory of every pipeline rank of a layout, without a GPU.",
        epilog="overrides: the Hydra overrides of `nemo-craft train` (model=..., parallel=..., cluster=..., "
        "parallel.tensor_model_parallel_size=4, +recipe=...), plus plan.* workload assumptions "
        "(plan.seq_length, plan.privileged_tokens, parallel.recompute_granularity=selective|full, ...).",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--no-suggest", action="store_true", help="do not search for a layout that fits")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, key=value")
    return parser.parse_intermixed_args(list(argv))


def _plan_overrides(overrides: Sequence[str]) -> list[str]:
    """``plan.x=v`` -> ``++plan.x=v``: the plan section is optional in the config."""
    return [f"++{o}" if o.startswith("plan.") else o for o in overrides]


def _model_choice(overrides: Sequence[str]) -> str:
    """The name of the chosen model config (``conf/model/<name>.yaml``)."""
    from hydra import compose, initialize_config_dir

    from nemo_craft.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # the group choices only (model=..., +recipe=...): field overrides are checked by config.compose
        choices = [o for o in overrides if "." not in o.split("=", 1)[0]]
        cfg = compose(config_name="config", overrides=choices, return_hydra_config=True)
    return str(cfg.hydra.runtime.choices.get("model", "model"))


def plan_from_overrides(overrides: Sequence[str], *, suggest: bool = True):
    """Compose the run config with ``overrides`` and plan it (a :class:`~nemo_craft.planner.plan.Plan`)."""
    from nemo_craft.config import RunConfig, compose
    from nemo_craft.planner.plan import make_plan

    overrides = _plan_overrides(overrides)
    cfg = compose(overrides)
    if "cluster" not in cfg:
        raise ValueError("the config has no 'cluster' section; pick one with cluster=NAME")
    # no validate(): a plan needs neither this machine's engines nor the environment's data
    run = RunConfig.from_omegaconf(cfg)
    return make_plan(
        run.model, run.parallel, run.cluster, run.plan, model_name=_model_choice(overrides), suggest=suggest
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        plan = plan_from_overrides(args.overrides, suggest=not args.no_suggest)
    except (ValueError, FileNotFoundError) as err:
        if args.json:
            print(json.dumps({"ok": False, "fits": False, "problems": [str(err)]}))
        print(f"nemo-craft plan: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_dict()))
    else:
        print(plan.format())
    return 0 if plan.ok else 1
