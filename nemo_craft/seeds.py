"""Every seed stream of a run, named in one place (imports nothing, so any layer may use it).

A run's ``seed`` (conf/config.yaml) is the root. Task seeds pick which environment instance an
episode plays; sampling seeds drive the generator's random draws. The streams are kept apart so
that no task is drawn twice for different purposes and no two turns share a sampling seed:

    training tasks     seed * TRAIN_TASK_STRIDE + step * tasks_per_step + i      (from 7919 * seed)
    validation tasks   trainer.val_seed_offset + i                                (1e6 by default)
    warm-start demos   WARM_START_FIRST_TASK + i                                  (5e8 on)
    test tasks         TEST_FIRST_TASK + i  (environments without a held-out split: Sokoban)
    rollout sampling   seed * SAMPLING_STRIDE + step, then per (data-parallel rank, turn)

The values are part of the results: changing one changes every run's draws (the e2e tests
compare runs bit for bit across layouts, not against stored numbers, so they would not notice).
"""

from __future__ import annotations

__all__ = [
    "TRAIN_TASK_STRIDE",
    "SAMPLING_STRIDE",
    "TURN_STRIDE",
    "WARM_START_FIRST_TASK",
    "TEST_FIRST_TASK",
    "train_task_seed0",
    "step_sampling_seed",
    "turn_sampling_seed",
]

TRAIN_TASK_STRIDE = 7_919
"""A prime: the training tasks of consecutive run seeds start 7919 tasks apart."""
SAMPLING_STRIDE = 1_000_003
"""A prime larger than any step count: the rollout seeds of two run seeds never meet."""
TURN_STRIDE = 1_000_033
"""A prime larger than any turn count, separating the per-rank sampling streams of one step."""
WARM_START_FIRST_TASK = 500_000_000
"""Warm-start demonstrations are drawn from here on, far from training and validation tasks."""
TEST_FIRST_TASK = 2_000_000_000
"""First test task of environments without a held-out split (Sokoban)."""


def train_task_seed0(seed: int) -> int:
    """The first training task seed of run seed ``seed``."""
    return int(seed) * TRAIN_TASK_STRIDE


def step_sampling_seed(seed: int, step: int) -> int:
    """The rollout sampling seed of training step ``step`` (0-based) of run seed ``seed``."""
    return int(seed) * SAMPLING_STRIDE + step


def turn_sampling_seed(seed: int, dp_rank: int, turn: int) -> int:
    """The sampling seed of one turn of a rollout with sampling seed ``seed`` on ``dp_rank``."""
    return ((int(seed) * SAMPLING_STRIDE + dp_rank) * TURN_STRIDE + turn) % (2**63)
