"""Which tasks an evaluation split is, per environment: the environment's own split setting
(``env.config.split``) and the first task seed, as the environment class declares them
(``TextEnv.eval_splits``; nemo_craft/envs/spec.py).

    spec = split_spec("scienceworld", "test")        # SplitSpec(env_split="test", seed_offset=0)
    seeds = spec.seeds(64, val_seed_offset=1_000_000)

- ``val`` is what the trainer validates on: seeds from ``trainer.val_seed_offset`` on, in the
  split the run was configured with, unless the environment declares another (ScienceWorld: its
  official ``dev`` variations).
- ``test`` is held out: the environment's test split where it has one, read from its first task
  on; an environment without one (procedural: Sokoban) draws from the test seed stream
  (``TEST_SEED_OFFSET``), far from the training, warm-start and validation seeds (the streams of
  ``nemo_craft.seeds``).

A seed picks a task ``seed % #tasks`` in environments with a fixed task list, so asking for more
tasks than a split holds repeats tasks (with other sampling seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nemo_craft.envs.registry import ENVIRONMENTS, env_class
from nemo_craft.envs.spec import HELD_OUT, EvalSplit
from nemo_craft.seeds import TEST_FIRST_TASK

__all__ = ["SPLITS", "TEST_SEED_OFFSET", "SplitSpec", "split_spec"]

SPLITS = ("val", "test")
TEST_SEED_OFFSET = TEST_FIRST_TASK
"""First test seed of environments without a held-out split (Sokoban): nemo_craft/seeds.py."""


@dataclass(frozen=True)
class SplitSpec:
    """One evaluation split of one environment."""

    name: str
    """"val" or "test"."""
    env_split: Optional[str]
    """Value for ``env.config.split``; None leaves the run's configured split."""
    seed_offset: Optional[int]
    """First task seed; None: ``trainer.val_seed_offset``."""

    def seeds(self, n_tasks: int, *, val_seed_offset: int) -> list[int]:
        first = val_seed_offset if self.seed_offset is None else self.seed_offset
        return [first + i for i in range(n_tasks)]


def split_spec(env_name: str, split: str) -> SplitSpec:
    """The split ``split`` ("val" / "test") of environment ``env_name``."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: allowed values are {SPLITS}")
    if env_name not in ENVIRONMENTS:
        raise ValueError(
            f"no evaluation splits are defined for environment {env_name!r}: it is not registered; "
            f"known: {sorted(ENVIRONMENTS)}"
        )
    declared = {"val": EvalSplit(), **env_class(env_name).eval_splits}
    if split not in declared:
        raise ValueError(
            f"environment {env_name!r} declares no {split!r} evaluation split: set eval_splits on its class "
            "(docs/extending.md#environment)"
        )
    spec = declared[split]
    offset = TEST_SEED_OFFSET if spec.first_seed == HELD_OUT else spec.first_seed
    return SplitSpec(split, spec.env_split, offset)
