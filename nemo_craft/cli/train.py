"""``nemo-craft train [key=value ...]``: compose the config and run the RL loop.

Under torchrun/SLURM every rank runs this with the same overrides; run directly, it is one
process on this machine (world size 1).
"""

from __future__ import annotations

import sys

from nemo_craft.config import compose
from nemo_craft.parallel.rendezvous import single_process_env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("overrides: any key of conf/config.yaml, e.g. method=sdar env=sokoban parallel=tp2 trainer.max_steps=20")
        return 0
    from nemo_craft.envs.registry import MissingEngineError
    from nemo_craft.trainer.trainer import CraftTrainer

    single_process_env()
    try:  # a user's mistake in the config: one line naming the value, before any process group
        trainer = CraftTrainer(compose(argv))
    except (ValueError, MissingEngineError) as err:
        print(f"nemo-craft train: {err}", file=sys.stderr)
        return 2
    val = trainer.fit()
    if val and trainer.rank == 0:
        print(f"[nemo_craft] final validation success {val.get('val/success_rate', float('nan')):.3f}")
    from nemo_craft.parallel.initialize import destroy_parallel

    destroy_parallel()
    return 0
