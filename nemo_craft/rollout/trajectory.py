"""Trajectories (one token sequence each, docs/algorithm.md#notation-and-setting) and their padded tensors.

Shape letters: B trajectories, S positions of the student sequence (padded), T positions of the
teacher sequence (padded).

Per-token fields of a :class:`Trajectory` describe the token itself (``loss_mask[i]`` is 1 when
token i was sampled by the policy). The collated tensors are shifted for next-token prediction,
as megatron's GPT datasets do: ``input_ids[b, s]`` is token s, ``targets[b, s]`` is token s + 1,
and ``loss_mask`` / ``turn_ids`` / ``pos_in_turn`` / ``rollout_logprobs`` at [b, s] describe the
target token. So a model's log-prob of ``targets`` at [b, s] is the log-prob of action token
(turn_ids[b, s], pos_in_turn[b, s]) wherever ``loss_mask[b, s]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

__all__ = [
    "TurnRecord",
    "Trajectory",
    "TrajectoryBatch",
    "TeacherBatch",
    "collate_trajectories",
    "collate_teacher",
    "align_teacher_logprobs",
]


@dataclass
class TurnRecord:
    """One turn as text, for logs and debugging."""

    user: str
    """The user message of the turn (task and first observation, or the observation)."""
    action: str
    """The assistant message (the action decoded, without a final end-of-turn token)."""
    reward: float = 0.0
    finish_reason: str = ""
    """How generation of the action ended: "eos", "stop" or "length"."""
    invalid: bool = False


@dataclass
class Trajectory:
    """One episode of one task: the whole conversation as tokens, plus its outcome."""

    task_seed: int
    """The environment seed (the task)."""
    group_id: int
    """The sibling group: trajectories of the same task in the same step share it."""
    sibling_index: int
    """0..G-1 inside the group."""
    token_ids: list[int] = field(default_factory=list)
    """The conversation: prompt, then per turn the action and the continuation."""
    loss_mask: list[int] = field(default_factory=list)
    """1 on tokens the policy sampled (action tokens), 0 elsewhere."""
    turn_ids: list[int] = field(default_factory=list)
    """Turn index k of each action token (0 elsewhere)."""
    pos_in_turn: list[int] = field(default_factory=list)
    """Position t of each action token inside its turn's action (0 elsewhere)."""
    logprobs: list[float] = field(default_factory=list)
    """Rollout log-probability of each action token (0 elsewhere), for diagnostics."""
    prompt_length: int = 0
    """Tokens of the student prompt (system + first user message + generation prompt)."""
    teacher_prompt_ids: list[int] = field(default_factory=list)
    """The teacher prompt (privileged context as system message + the first user message)."""
    reward: float = 0.0
    """Sum of the environment's step rewards."""
    success: bool = False
    score: float = 0.0
    n_invalid: int = 0
    """Invalid actions taken."""
    num_turns: int = 0
    privileged_context: str = ""
    turns: list[TurnRecord] = field(default_factory=list)
    policy_versions: list[int] = field(default_factory=list)
    """The policy version (optimizer steps taken) whose weights generated each turn; empty when
    the training ranks generated (colocated: the step's own weights)."""
    finish_reason: str = ""
    """Why the episode ended: "done" (the environment ended it: solved or out of turns),
    "max_turns" (the runner's turn limit), "token_budget" (the episode's action-token budget),
    "context" (the sequence limit) or "env_error"."""
    error: Optional[str] = None
    """The environment failure that ended the episode, if any."""
    info: dict[str, Any] = field(default_factory=dict)
    """The environment's last info."""

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_action_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def teacher_offset(self) -> int:
        """Teacher position of student token i is i + teacher_offset (for i >= prompt_length)."""
        return len(self.teacher_prompt_ids) - self.prompt_length

    def teacher_token_ids(self) -> list[int]:
        """The teacher's sequence: teacher prompt, then the student's tokens after its prompt."""
        return list(self.teacher_prompt_ids) + self.token_ids[self.prompt_length :]

    def append(
        self, ids: Sequence[int], *, turn: Optional[int] = None, logprobs: Optional[Sequence[float]] = None
    ) -> None:
        """Append tokens: an action (``turn`` given: loss mask 1, positions 0..) or context."""
        ids = [int(i) for i in ids]
        self.token_ids += ids
        if turn is None:
            self.loss_mask += [0] * len(ids)
            self.turn_ids += [0] * len(ids)
            self.pos_in_turn += [0] * len(ids)
            self.logprobs += [0.0] * len(ids)
        else:
            assert logprobs is not None and len(logprobs) == len(ids)
            self.loss_mask += [1] * len(ids)
            self.turn_ids += [turn] * len(ids)
            self.pos_in_turn += list(range(len(ids)))
            self.logprobs += [float(x) for x in logprobs]


@dataclass
class TrajectoryBatch:
    """Padded student tensors of B trajectories (positions past a row's end are padding)."""

    input_ids: torch.Tensor
    """[B, S] int64: tokens 0..n-2 of each sequence."""
    targets: torch.Tensor
    """[B, S] int64: tokens 1..n-1 (the next token of each input position)."""
    loss_mask: torch.Tensor
    """[B, S] bool: the target is an action token."""
    turn_ids: torch.Tensor
    """[B, S] int64: turn index k of the target (0 where loss_mask is False)."""
    pos_in_turn: torch.Tensor
    """[B, S] int64: position t of the target in its turn's action (0 where loss_mask is False)."""
    rollout_logprobs: torch.Tensor
    """[B, S] float32: log-prob of the target at rollout time (0 where loss_mask is False)."""
    lengths: torch.Tensor
    """[B] int64: valid positions of each row (sequence length - 1)."""
    rewards: torch.Tensor
    """[B] float32: trajectory rewards."""
    group_ids: torch.Tensor
    """[B] int64: sibling group (task) of each trajectory."""

    def to(self, device) -> TrajectoryBatch:
        return TrajectoryBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


@dataclass
class TeacherBatch:
    """The teacher's sequences of B trajectories and the map back to the student's positions."""

    input_ids: torch.Tensor
    """[B, T] int64: the teacher sequence without its last token."""
    targets: torch.Tensor
    """[B, T] int64: the teacher sequence shifted by one."""
    gather_index: torch.Tensor
    """[B, S] int64: ``targets[b, gather_index[b, s]]`` is the student's ``targets[b, s]`` wherever
    the student's loss_mask is True (0 elsewhere)."""
    lengths: torch.Tensor
    """[B] int64: valid positions of each row."""

    def to(self, device) -> TeacherBatch:
        return TeacherBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


def _padded_length(n: int, multiple: int) -> int:
    return max(1, -(-n // multiple) * multiple)


def _shifted(rows: Sequence[Sequence], pad, dtype, length: int) -> torch.Tensor:
    out = torch.full((len(rows), length), pad, dtype=dtype)
    for b, row in enumerate(rows):
        if len(row):
            out[b, : len(row)] = torch.tensor(list(row), dtype=dtype)
    return out


def collate_trajectories(
    trajectories: Sequence[Trajectory], *, pad_id: int, pad_to_multiple_of: int = 1
) -> TrajectoryBatch:
    """Padded [B, S] tensors of the student sequences (S = longest sequence - 1, rounded up to
    ``pad_to_multiple_of``, e.g. the TP size under sequence parallel)."""
    if not trajectories:
        raise ValueError("collate_trajectories needs at least one trajectory")
    for tr in trajectories:
        if len(tr.token_ids) < 2:
            raise ValueError(f"trajectory of task {tr.task_seed} has {len(tr.token_ids)} tokens; need >= 2")
    S = _padded_length(max(len(tr) for tr in trajectories) - 1, pad_to_multiple_of)
    return TrajectoryBatch(
        input_ids=_shifted([tr.token_ids[:-1] for tr in trajectories], pad_id, torch.long, S),
        targets=_shifted([tr.token_ids[1:] for tr in trajectories], pad_id, torch.long, S),
        loss_mask=_shifted([tr.loss_mask[1:] for tr in trajectories], 0, torch.long, S).bool(),
        turn_ids=_shifted([tr.turn_ids[1:] for tr in trajectories], 0, torch.long, S),
        pos_in_turn=_shifted([tr.pos_in_turn[1:] for tr in trajectories], 0, torch.long, S),
        rollout_logprobs=_shifted([tr.logprobs[1:] for tr in trajectories], 0.0, torch.float32, S),
        lengths=torch.tensor([len(tr) - 1 for tr in trajectories], dtype=torch.long),
        rewards=torch.tensor([tr.reward for tr in trajectories], dtype=torch.float32),
        group_ids=torch.tensor([tr.group_id for tr in trajectories], dtype=torch.long),
    )


def collate_teacher(
    trajectories: Sequence[Trajectory],
    *,
    pad_id: int,
    pad_to_multiple_of: int = 1,
    student_length: Optional[int] = None,
) -> TeacherBatch:
    """The teacher view of ``trajectories``: privileged prompt + the same student tokens.

    ``student_length`` is S of the student batch the index map is for (default: as
    :func:`collate_trajectories` computes it with ``pad_to_multiple_of=1``).
    """
    if any(not tr.teacher_prompt_ids for tr in trajectories):
        raise ValueError("every trajectory needs teacher_prompt_ids (the runner fills them)")
    teacher = [tr.teacher_token_ids() for tr in trajectories]
    T = _padded_length(max(len(t) for t in teacher) - 1, pad_to_multiple_of)
    longest = max(len(tr) for tr in trajectories) - 1
    S = student_length if student_length is not None else longest
    if S < longest:
        raise ValueError(f"student_length={S} is shorter than the longest student row ({longest})")
    gather_BS = torch.zeros(len(trajectories), S, dtype=torch.long)
    for b, tr in enumerate(trajectories):
        # Student target position s (token s + 1) -> teacher target position s + offset; only
        # tokens after the prompt are shared, which covers every action token.
        s = torch.arange(tr.prompt_length - 1, len(tr) - 1)
        mask = torch.tensor(tr.loss_mask[tr.prompt_length :], dtype=torch.bool)
        gather_BS[b, s[mask]] = s[mask] + tr.teacher_offset
    return TeacherBatch(
        input_ids=_shifted([t[:-1] for t in teacher], pad_id, torch.long, T),
        targets=_shifted([t[1:] for t in teacher], pad_id, torch.long, T),
        gather_index=gather_BS,
        lengths=torch.tensor([len(t) - 1 for t in teacher], dtype=torch.long),
    )


def align_teacher_logprobs(logp_teacher_BT: torch.Tensor, gather_index_BS: torch.Tensor) -> torch.Tensor:
    """[B, T] teacher log-probs of the teacher targets -> [B, S] on the student's positions
    (meaningful where the student's loss_mask is True)."""
    return torch.gather(logp_teacher_BT, 1, gather_index_BS.to(logp_teacher_BT.device))
