"""Rollouts: in-process generation with the megatron model, multi-turn episodes, trajectories as
token tensors (masks, turn ids, positions) and the teacher's view of them."""

from nemo_craft.rollout.conversation import ChatFormat
from nemo_craft.rollout.episodes import EpisodeRunner, Policy, RolloutConfig
from nemo_craft.rollout.generation import GenerationConfig, GenerationResult, Generator
from nemo_craft.rollout.sampling import sample_next_tokens
from nemo_craft.rollout.stopping import FINISH_REASONS, StopCriteria
from nemo_craft.rollout.trajectory import (
    TeacherBatch,
    Trajectory,
    TrajectoryBatch,
    TurnRecord,
    align_teacher_logprobs,
    collate_teacher,
    collate_trajectories,
)

__all__ = [
    "FINISH_REASONS",
    "ChatFormat",
    "EpisodeRunner",
    "GenerationConfig",
    "GenerationResult",
    "Generator",
    "Policy",
    "RolloutConfig",
    "StopCriteria",
    "TeacherBatch",
    "Trajectory",
    "TrajectoryBatch",
    "TurnRecord",
    "align_teacher_logprobs",
    "collate_teacher",
    "collate_trajectories",
    "sample_next_tokens",
]
