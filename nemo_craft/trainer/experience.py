"""Experience: trajectories -> the step's detached per-token tensors
(docs/algorithm.md#notation-and-setting).

    exp = make_experience(model, reference, trajectories, loss_cfg, ...)

Old, teacher and reference log-probs come from no-grad passes through megatron's pipeline
schedule (``megatron_step.forward_only``) over the same micro-batching as training: padded rows
of ``micro_batch_size``, or packs of at most ``max_tokens_per_microbatch`` tokens
(:mod:`nemo_craft.trainer.packing`; the teacher's sequences, longer by the privileged prompt,
are packed by their own lengths; under context parallel each rank computes its part of every
sequence and the values are gathered back, so the step's tensors are those of CP 1); then GRPO
advantages, Delta, CTI and credits
(``compute_credits``, sibling sums over DP).
Shape letters: B trajectories of this DP rank, S student positions, T teacher positions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from nemo_craft.losses import LossConfig, TokenBatch, compute_credits
from nemo_craft.models.moe import Routing
from nemo_craft.parallel.context_parallel import check_same_over_cp
from nemo_craft.parallel.vocab_parallel import vocab_parallel_token_stats
from nemo_craft.rollout.trajectory import Trajectory, align_teacher_logprobs, collate_teacher, collate_trajectories
from nemo_craft.trainer.megatron_step import forward_only
from nemo_craft.trainer.packing import MicroBatches, split_micro_batches

__all__ = ["Experience", "make_experience", "micro_batches", "logprob_fn"]


@dataclass
class Experience:
    batch: TokenBatch
    """Per-token inputs of the loss, after ``compute_credits``."""
    input_ids: torch.Tensor
    """[B, S] student tokens."""
    targets: torch.Tensor
    """[B, S] next tokens (the sampled action tokens where loss_mask)."""
    lengths: torch.Tensor
    """[B] valid positions of each row."""
    timings: dict = field(default_factory=dict)
    """Seconds per phase: time/old_logprobs_s, time/teacher_logprobs_s, time/ref_logprobs_s, time/credits_s."""
    padding: dict = field(default_factory=dict)
    """Share of padded tokens in each pass that ran: perf/pad_frac_old, perf/pad_frac_teacher,
    perf/pad_frac_ref."""

    def train_micro_batches(
        self, micro_batch_size: int, max_tokens: Optional[int] = None, pad_multiple: int = 1
    ) -> MicroBatches:
        """The training pass's micro-batches (``input_ids``, ``targets`` and ``index``, the rows
        of ``batch``), split as the no-grad passes were."""
        tensors = {
            "input_ids": self.input_ids,
            "targets": self.targets,
            "index": torch.arange(self.input_ids.shape[0], device=self.input_ids.device),
        }
        return split_micro_batches(
            tensors, self.lengths, micro_batch_size=micro_batch_size, max_tokens=max_tokens, pad_multiple=pad_multiple
        )


def logprob_fn(chunk_size: int = 256, vocab_size: Optional[int] = None, temperature: float = 1.0):
    """value_fn for ``forward_only``: log pi(target) per valid token, 0 elsewhere, [b, s], with
    pi = softmax(logits / temperature) (``vocab_size``: the real vocabulary, when the logits
    carry padding columns)."""
    from megatron.core import parallel_state as ps

    def value_fn(mb: dict, logits: torch.Tensor) -> torch.Tensor:
        mask = mb["loss_mask"]
        stats = vocab_parallel_token_stats(
            logits,
            mb["targets"],
            mask,
            tp_group=ps.get_tensor_model_parallel_group(),
            chunk_size=chunk_size,
            vocab_size=vocab_size,
            temperature=temperature,
        )
        out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
        out[mask] = stats.logp.detach().float()
        return out

    return value_fn


def micro_batches(tensors: dict[str, torch.Tensor], micro_batch_size: int) -> list[dict]:
    """Split [B, ...] tensors into dicts of [micro_batch_size, ...] (B must divide), padded rows."""
    lengths = torch.full((tensors["input_ids"].shape[0],), tensors["input_ids"].shape[1])
    return split_micro_batches(tensors, lengths, micro_batch_size=micro_batch_size).items


def _teacher_mask(tb, student_mask_BS: torch.Tensor) -> torch.Tensor:
    mask_BT = torch.zeros(tb.input_ids.shape, dtype=torch.bool)
    rows = torch.arange(student_mask_BS.shape[0]).unsqueeze(1).expand_as(student_mask_BS)
    mask_BT[rows[student_mask_BS], tb.gather_index[student_mask_BS]] = True
    return mask_BT


def make_experience(
    model: list,
    reference,
    trajectories: Sequence[Trajectory],
    loss_cfg: LossConfig,
    *,
    pad_id: int,
    micro_batch_size: int,
    pad_to_multiple_of: int,
    max_tokens_per_microbatch: Optional[int] = None,
    dp_group,
    sample_offset: int,
    device: torch.device,
    vocab_size: Optional[int] = None,
    old_pass: Optional[bool] = None,
    temperature: float = 1.0,
    routing: Optional[Routing] = None,
) -> Experience:
    """Detached per-token tensors of this DP rank's trajectories, credits included.

    ``old_pass``: run the no-grad pass of the rollout policy's log-probs. None: where the loss
    reads them before training (``loss_cfg.needs_old_logprobs``: the teacher-student gap or the
    off-policy weights). Without it
    the batch is on-policy (``logp_old`` None) and the loss takes the training forward's own
    log-probs: one optimizer step per rollout makes them pi_old's (GRPO: one forward pass fewer).
    ``temperature``: the rollouts' behaviour temperature; every pass computes its log-probs at it.
    ``max_tokens_per_microbatch``: pack the sequences into micro-batches of at most this many
    tokens (None: padded rows of ``micro_batch_size``); ``pad_to_multiple_of`` then rounds the packs.
    """
    sb = collate_trajectories(trajectories, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    # context parallel: each CP rank rolled out the same episodes; the passes split their tokens
    check_same_over_cp({"tokens": sb.input_ids, "loss_mask": sb.loss_mask, "rewards": sb.rewards}, "rollouts")
    S = sb.input_ids.shape[1]
    mask = sb.loss_mask
    fn = logprob_fn(loss_cfg.chunk_size, vocab_size, temperature)
    student = {"input_ids": sb.input_ids.to(device), "targets": sb.targets.to(device), "loss_mask": mask.to(device)}
    split = dict(
        micro_batch_size=micro_batch_size, max_tokens=max_tokens_per_microbatch, pad_multiple=pad_to_multiple_of
    )
    student_mbs = split_micro_batches(student, sb.lengths, **split)
    padding = {}
    clock = _Clock(device)
    old_pass = loss_cfg.needs_old_logprobs if old_pass is None else old_pass
    logp_old = None
    if old_pass:
        with routing.record() if routing is not None else contextlib.nullcontext():
            logp_old = student_mbs.to_rows(forward_only(model, student_mbs.items, fn))
        padding["perf/pad_frac_old"] = student_mbs.pad_fraction
    clock.lap("time/old_logprobs_s")
    logp_teacher = None  # nothing reads it (GRPO): Delta = 0 and one forward pass fewer
    if loss_cfg.uses_teacher:
        tb = collate_teacher(trajectories, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of, student_length=S)
        teacher = {
            "input_ids": tb.input_ids.to(device),
            "targets": tb.targets.to(device),
            "loss_mask": _teacher_mask(tb, mask).to(device),
        }
        teacher_mbs = split_micro_batches(teacher, tb.lengths, **split)
        logp_teacher = align_teacher_logprobs(
            teacher_mbs.to_rows(forward_only(model, teacher_mbs.items, fn)), tb.gather_index
        )
        padding["perf/pad_frac_teacher"] = teacher_mbs.pad_fraction
    clock.lap("time/teacher_logprobs_s")
    replay = routing.replay() if routing is not None and old_pass else contextlib.nullcontext()
    with reference.swapped_in(model), replay:
        logp_ref = student_mbs.to_rows(forward_only(model, student_mbs.items, fn))
    padding["perf/pad_frac_ref"] = student_mbs.pad_fraction
    clock.lap("time/ref_logprobs_s")
    m = mask.to(device)
    zero = torch.zeros((), device=device)
    batch = TokenBatch(
        logp_old=None if logp_old is None else torch.where(m, logp_old, zero),
        logp_teacher=None if logp_teacher is None else torch.where(m, logp_teacher, zero),
        logp_ref=torch.where(m, logp_ref, zero),
        loss_mask=m,
        logp_rollout=torch.where(m, sb.rollout_logprobs.to(device), zero),
        rewards=sb.rewards.to(device),
        group_ids=sb.group_ids.to(device),
        turn_ids=sb.turn_ids.to(device),
        pos_in_turn=sb.pos_in_turn.to(device),
        sample_ids=torch.arange(len(trajectories), device=device) + sample_offset,
    )
    batch = compute_credits(batch, loss_cfg, dp_group=dp_group)
    clock.lap("time/credits_s")
    return Experience(
        batch=batch,
        input_ids=student["input_ids"],
        targets=student["targets"],
        lengths=sb.lengths.to(device),
        timings=clock.laps,
        padding=padding,
    )


class _Clock:
    """Wall time of consecutive phases (synchronising the GPU at each lap)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.laps: dict[str, float] = {}
        self._t = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        t = self._now()
        self.laps[name] = t - self._t
        self._t = t
