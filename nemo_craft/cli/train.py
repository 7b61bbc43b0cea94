"""``nemo-craft train [key=value ...]``: compose the config and run the RL loop.

Under torchrun/SLURM every rank runs this with the same overrides; run directly, it is one
process on this machine (world size 1). ``nemo-craft train --cfg job [key=value ...]`` prints the
composed config, every default filled in and every section validated, and exits (Hydra's flag).
"""

from __future__ import annotations

import sys

from nemo_craft.config import load_run
from nemo_craft.parallel.rendezvous import single_process_env
from nemo_craft.trainer.run_dir import check_run_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(
            "overrides: a config group (method=sdar env=sokoban parallel=tp2) or any field of a section\n"
            "(trainer.max_steps=20 loss.sd_coef=0.01); `nemo-craft train --cfg job [overrides]` shows them all"
        )
        return 0
    show = bool(argv) and argv[0] == "--cfg"
    if show:
        argv = argv[2:] if argv[1:2] == ["job"] else argv[1:]
    else:
        single_process_env()
    trainer = validated_trainer(argv)
    if trainer is None:
        return 2
    if show:  # RLTrainer() built no process group, model or weight
        print(trainer.run.to_yaml(), end="")
        return 0
    try:
        check_run_dir(trainer.run)  # one run per run directory (every rank checks, before any process group)
    except ValueError as err:
        print(f"nemo-craft train: {err}", file=sys.stderr)
        return 2
    val = trainer.fit()
    if val and trainer.rank == 0:
        print(f"[nemo_craft] final validation success {val.get('val/success_rate', float('nan')):.3f}")
    from nemo_craft.parallel.initialize import destroy_parallel

    destroy_parallel()
    return 0


def validated_trainer(overrides: list[str]):
    """``RLTrainer`` of the composed config, or None after printing a user's mistake in it as
    one line naming the value (before any process group)."""
    from nemo_craft.envs.registry import MissingEngineError
    from nemo_craft.trainer.trainer import RLTrainer

    try:
        return RLTrainer(load_run(overrides))
    except (ValueError, MissingEngineError) as err:
        print(f"nemo-craft train: {err}", file=sys.stderr)
        return None
