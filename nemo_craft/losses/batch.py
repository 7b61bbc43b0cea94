"""The per-token and per-trajectory tensors the loss reads, checked once when built.

Shape letters: B trajectories (samples), S tokens per sample (padded).

The step's batch is checked when it is built (shapes and dtypes from the metadata, values with
one host read for the whole batch); ``select`` takes micro-batches and shards of a checked batch
without checking again and without reading anything on the host, so the training loss runs
without a host sync per micro-batch (docs/design.md#no-host-sync-in-the-micro-batch-loop).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["TokenBatch"]

_TOKEN_FLOATS = ("logp_old", "logp_teacher", "logp_ref", "logp_rollout")
_OPTIONAL = ("logp_old", "logp_teacher", "logp_rollout")
_TOKEN_INTS = ("turn_ids", "pos_in_turn")
_FILLED_TOKEN = ("delta", "gate", "cti", "credit", "is_weight")


@dataclass
class TokenBatch:
    """Rollout data of B trajectories, detached; ``compute_credits`` fills the second part.

    Values at positions where ``loss_mask`` is False are never read (they may be padding).
    """

    logp_old: Optional[torch.Tensor]
    """[B, S] float: log pi_old(y | student context), the rollout policy. None: on-policy (one
    optimizer step per rollout and nothing reads the teacher-student gap): the loss takes the
    training forward's own log-probs, detached, which are pi_old's, and no pass computes them."""
    logp_teacher: Optional[torch.Tensor]
    """[B, S] float: log pi_old(y | privileged context + student context). None: no teacher pass
    (a config that does not read it: ``LossConfig.uses_teacher`` False); Delta is then 0."""
    logp_ref: torch.Tensor
    """[B, S] float: log pi_ref(y | student context), the frozen initial policy."""
    loss_mask: torch.Tensor
    """[B, S] bool: True on the action tokens that are trained."""
    rewards: torch.Tensor
    """[B] float: trajectory reward R_i."""
    group_ids: torch.Tensor
    """[B] int >= 0: the task each trajectory was rolled out for (its sibling group)."""
    turn_ids: torch.Tensor
    """[B, S] int >= 0: turn index k of each action token."""
    pos_in_turn: torch.Tensor
    """[B, S] int >= 0: position t of each action token inside its turn's action."""
    logp_rollout: Optional[torch.Tensor] = None
    """[B, S] float: the log-probs the sampler reported for the tokens it drew (at the behaviour
    temperature): the behaviour policy's. Their distance from pi_old's (``rollout/logprob_diff_*``)
    is the train/inference mismatch, ~0 in fp32; the off-policy correction weighs by it
    (``LossConfig.off_policy``, which needs them). None: not monitored."""
    sample_ids: Optional[torch.Tensor] = None
    """[B] int >= 0: index of the trajectory in the step's global batch; seeds CRINGE's draw
    (with the step and the position) so it does not depend on the micro-batch split.
    None means 0..B-1 (right for one process and one micro-batch)."""

    advantages: Optional[torch.Tensor] = None
    """[B] float32: GRPO advantage A_i (filled by compute_credits)."""
    delta: Optional[torch.Tensor] = None
    """[B, S] float32: Delta = logp_teacher - logp_old; 0 where loss_mask is False."""
    gate: Optional[torch.Tensor] = None
    """[B, S] float32: g = sigmoid(beta_g * Delta)."""
    cti: Optional[torch.Tensor] = None
    """[B, S] float32: counterfactual token importance; 0 where undefined; None when
    Pillar 1 is off."""
    credit: Optional[torch.Tensor] = None
    """[B, S] float32: distillation credit c (= g with Pillar 1 off)."""
    is_weight: Optional[torch.Tensor] = None
    """[B, S] float32: off-policy weight of the policy-gradient term (``losses.off_policy``);
    None when the correction is off."""
    num_global_tokens: Optional[int] = None
    """Valid tokens of the whole step (all DP ranks, all micro-batches): token_mean's divisor."""
    stats: dict = field(default_factory=dict)
    """Step-level credit metrics (identical on every DP rank), e.g. gate_activity."""

    def __post_init__(self) -> None:
        mask = self.loss_mask
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"loss_mask must be a [B, S] bool tensor, got {_describe(mask)}")
        shape = tuple(mask.shape)
        for name in _TOKEN_FLOATS:
            if not (name in _OPTIONAL and getattr(self, name) is None):
                _check_tensor(self, name, shape, floating=True)
        for name in _TOKEN_INTS:
            _check_tensor(self, name, shape, floating=False)
        _check_tensor(self, "rewards", shape[:1], floating=True)
        _check_tensor(self, "group_ids", shape[:1], floating=False)
        if self.sample_ids is not None:
            _check_tensor(self, "sample_ids", shape[:1], floating=False)
        if self.advantages is not None:
            _check_tensor(self, "advantages", shape[:1], floating=True)
        for name in _FILLED_TOKEN:
            if getattr(self, name) is not None:
                _check_tensor(self, name, shape, floating=True)
        _check_values(self)

    @property
    def batch_size(self) -> int:
        return self.loss_mask.shape[0]

    @property
    def num_tokens(self) -> int:
        """Valid (action) tokens in this batch."""
        return int(self.loss_mask.sum())

    def select(self, index) -> TokenBatch:
        """The trajectories ``index`` (a slice, a list or a tensor of sample indices): a micro-batch
        or a data-parallel shard. Step-level fields (num_global_tokens, stats) are kept.

        Not checked again (a part of a checked batch is valid) and nothing is read on the host:
        a slice gives views, a tensor of indices on the batch's device gathers there."""
        device = self.loss_mask.device
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=device)
        sub = copy.copy(self)  # no __post_init__: the checks ran when this batch was built
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(sub, f.name, value[index])
        if self.sample_ids is None:
            sub.sample_ids = torch.arange(self.batch_size, device=device)[index]
        return sub


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)} dtype {value.dtype}"
    return type(value).__name__


def _check_tensor(batch: TokenBatch, name: str, shape: tuple, *, floating: bool) -> None:
    value = getattr(batch, name)
    kind = "float" if floating else "integer"
    article = "a" if floating else "an"
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be {article} {kind} tensor of shape {list(shape)}, got {_describe(value)}")
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, expected {shape} (loss_mask is {tuple(batch.loss_mask.shape)})"
        )
    if value.is_floating_point() != floating or value.dtype == torch.bool:
        raise ValueError(f"{name} must be {article} {kind} tensor, got dtype {value.dtype}")


def _check_values(batch: TokenBatch) -> None:
    """No NaN in the log-probs (on action tokens) and rewards, no negative id: every condition
    is reduced on the device and the flags are read with one host sync; a failed one is then
    described (more reads, on the error path only)."""
    mask = batch.loss_mask
    checks = []  # (field, what is wrong, [] bool flag)
    for name in _TOKEN_FLOATS:
        value = getattr(batch, name)
        if value is not None:
            checks.append((name, "nan", (torch.isnan(value) & mask).any()))
    checks.append(("rewards", "nan", torch.isnan(batch.rewards).any()))
    for name in ("group_ids", "sample_ids"):
        value = getattr(batch, name)
        if value is not None:
            checks.append((name, "negative", (value < 0).any()))
    for name in _TOKEN_INTS:
        checks.append((name, "negative_action", ((getattr(batch, name) < 0) & mask).any()))
    flags = torch.stack([flag for _, _, flag in checks]).tolist()
    for (name, kind, _), bad in zip(checks, flags):
        if bad:
            raise ValueError(_describe_failure(batch, name, kind))


def _describe_failure(batch: TokenBatch, name: str, kind: str) -> str:
    value = getattr(batch, name)
    if kind == "nan":
        values = value if name == "rewards" else value[batch.loss_mask]
        return (
            f"{name} contains NaN ({int(torch.isnan(values).sum())} of {values.numel()} values "
            "on action tokens); check the log-prob / reward computation"
        )
    if kind == "negative":
        return f"{name} must be >= 0, got min {int(value.min())}"
    return f"{name} must be >= 0 on action tokens, got min {int(value[batch.loss_mask].min())}"
