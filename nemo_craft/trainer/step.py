"""One RL optimizer step's pieces: the training pass's loss function and the update with the
non-finite policy (a step whose loss or any gradient on any rank is not finite changes nothing).

The loop (``trainer.py``) calls them in order: rollout, experience, ``training_loss_fn`` through
megatron's schedule, ``GuardedUpdate.step``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from nemo_craft.losses import policy_loss
from nemo_craft.losses.policy import check_targets
from nemo_craft.parallel.ddp import grads_are_finite
from nemo_craft.trainer.packing import select_sequences

__all__ = ["NonFiniteLossError", "GuardedUpdate", "training_loss_fn"]


class NonFiniteLossError(RuntimeError):
    pass


def training_loss_fn(batch, targets_BS, cfg, state, *, tp_group=None, vocab_size=None, temperature=1.0):
    """The loss function of a step's training pass (``megatron_step.forward_backward``'s
    ``loss_fn``): (micro-batch with its "index" into ``batch`` and its "targets", logits) ->
    (sum of its per-token losses, its valid tokens, metrics as device tensors).

    The checks run here, once per step: the step batch was checked when built, the targets are
    checked now; each micro-batch then runs without a host synchronisation
    (docs/design.md#no-host-sync-in-the-micro-batch-loop). Logits that are not finite make the
    loss not finite, which ``GuardedUpdate.step`` catches once per step.
    """
    check_targets(targets_BS, batch.loss_mask, vocab_size)

    def loss_fn(mb, logits):
        # a packed sequence: its length; context parallel: this rank's columns
        columns = mb.get("cp_columns")
        sub = select_sequences(batch, mb["index"], mb["targets"].shape[1], columns)
        loss_sum, metrics = policy_loss(
            logits,
            mb["targets"],
            sub,
            cfg,
            state,
            tp_group=tp_group,
            num_global_tokens=1,
            vocab_size=vocab_size,
            temperature=temperature,
            validate=False,
            positions_S=columns,
        )
        return loss_sum, sub.loss_mask.sum(), metrics

    return loss_fn


class GuardedUpdate:
    """The optimizer update, unless the loss or any gradient on any rank is not finite: then
    weights, optimizer state and lr schedule stay, the step is counted, and ``max_nan_steps``
    such steps in a row stop the run."""

    def __init__(self, max_nan_steps: int, *, rank: int, nan_steps: int = 0):
        self.max_nan_steps = max_nan_steps
        self.rank = rank
        self.nan_steps = nan_steps
        self.in_a_row = 0

    def step(self, model, optimizer, scheduler, loss: torch.Tensor, device, *, step: int) -> tuple[bool, float]:
        """(the update happened, the gradient norm or nan); ``step`` is the one being taken."""
        finite = torch.stack([torch.isfinite(loss).float(), grads_are_finite(model, device)])
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite.min() == 1.0):
            ok, grad_norm, _ = optimizer.step()
            ok = bool(ok) and (grad_norm is None or math.isfinite(grad_norm))
            grad_norm = float("nan") if grad_norm is None else grad_norm
        else:
            ok, grad_norm = False, float("nan")
        if ok:
            scheduler.step(1)
            self.in_a_row = 0
            return True, float(grad_norm)
        optimizer.zero_grad()
        self.nan_steps += 1
        self.in_a_row += 1
        if self.rank == 0:
            print(
                f"[nemo_craft] step {step}: non-finite loss or gradient ({loss.item()}); "
                f"step skipped ({self.in_a_row} in a row, {self.nan_steps} in all)",
                flush=True,
            )
        if self.in_a_row >= self.max_nan_steps:
            raise NonFiniteLossError(
                f"{self.in_a_row} steps in a row had a non-finite loss or gradient (trainer.max_nan_steps="
                f"{self.max_nan_steps}); stopping. Lower trainer.optim.lr, check the reward scale, or resume "
                "from the last checkpoint"
            )
        return False, float("nan")
