"""Which tasks an evaluation split is, per environment: the environment's own split setting
(``env.config.split``) and the first task seed.

    spec = split_spec("scienceworld", "test")        # SplitSpec(env_split="test", seed_offset=0)
    seeds = spec.seeds(64, val_seed_offset=1_000_000)

- ``val`` is what the trainer validates on: seeds from ``trainer.val_seed_offset`` on, in the
  split the run was configured with (``train`` for every environment's default), except
  ScienceWorld, whose official ``dev`` variations are used.
- ``test`` is held out: the environment's test split where it has one, read from its first task
  on (ALFWorld ``test`` = the official ``valid_unseen`` games with ``$ALFWORLD_DATA``, unseen
  floor plans for generated games; ScienceWorld's ``test`` variations, less the few whose gold
  sequence does not fit the environment's ``turn_cap`` (docs/environments.md); Search-QA's test
  questions; WebShop's held-out products). Sokoban is procedural and has no split: its test seeds
  start at ``TEST_SEED_OFFSET``, far from the training, warm-start and validation seeds (the
  streams of ``nemo_craft.seeds``).

A seed picks a task ``seed % #tasks`` in environments with a fixed task list, so asking for more
tasks than a split holds repeats tasks (with other sampling seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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


# env -> split -> (env.config.split, first seed)
_TABLE: dict[str, dict[str, tuple[Optional[str], Optional[int]]]] = {
    "sokoban": {"val": (None, None), "test": (None, TEST_SEED_OFFSET)},
    "alfworld": {"val": (None, None), "test": ("test", 0)},
    "search_qa": {"val": (None, None), "test": ("test", 0)},
    "webshop": {"val": (None, None), "test": ("test", 0)},
    "scienceworld": {"val": ("dev", 0), "test": ("test", 0)},
}


def split_spec(env_name: str, split: str) -> SplitSpec:
    """The split ``split`` ("val" / "test") of environment ``env_name``."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: allowed values are {SPLITS}")
    if env_name not in _TABLE:
        raise ValueError(
            f"no evaluation splits are defined for environment {env_name!r}; known: {sorted(_TABLE)} "
            "(add it to nemo_craft/eval/splits.py)"
        )
    env_split, offset = _TABLE[env_name][split]
    return SplitSpec(split, env_split, offset)
