"""The policy loss of every method: SDAR's terms, the CRAFT pillars, the related methods.

Shape letters: B samples, S tokens, V vocabulary (V/TP per rank), N valid tokens of the
micro-batch.

    L = token_mean(L_pg + L_ent + L_kl + L_sd)

in that order, each term a function of ``terms``. A switch that is off skips its code with a
Python ``if`` and leaves the operations of the others unchanged (docs/algorithm.md#the-switch-contract), so the
loss and its gradient are bit-identical to the method without that pillar:

- Pillar 1 (counterfactual) lives in ``compute_credits``: the loss reads ``batch.credit``,
  which is the gate g itself when the switch is off;
- Pillar 2 (controller) picks where lambda and beta come from (the state or the config);
- Pillar 3 (polarized_kl) picks ``polarized_kl`` instead of ``k3``;
- the off-policy correction (``off_policy``, ``seq_mask``) multiplies the policy-gradient term
  by the weights ``compute_credits`` put in ``batch.is_weight`` (``losses/off_policy.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from nemo_craft.losses import terms
from nemo_craft.losses.batch import TokenBatch
from nemo_craft.losses.config import LossConfig
from nemo_craft.losses.controller import ControllerState
from nemo_craft.losses.off_policy import weight_metrics
from nemo_craft.parallel.vocab_parallel import counter_uniforms, vocab_parallel_token_stats

__all__ = ["policy_loss", "check_targets"]


def check_targets(targets_BS: torch.Tensor, mask_BS: torch.Tensor, vocab_size: Optional[int]) -> None:
    """The targets of the valid tokens are vocabulary ids in [0, vocab_size) (None: >= 0 only),
    read in one host sync: a step's check, so that its micro-batches need none."""
    if tuple(targets_BS.shape) != tuple(mask_BS.shape) or targets_BS.is_floating_point():
        raise ValueError(
            f"targets must be integer [B, S] = {tuple(mask_BS.shape)}, got {tuple(targets_BS.shape)} {targets_BS.dtype}"
        )
    if not bool(mask_BS.any()):
        return
    valid = targets_BS[mask_BS]
    low, high = torch.stack([valid.min(), valid.max()]).tolist()
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        allowed = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise ValueError(f"targets must be vocabulary ids in {allowed} on valid tokens; got range [{low}, {high}]")


def policy_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    batch: TokenBatch,
    cfg: LossConfig,
    state: Optional[ControllerState] = None,
    *,
    tp_group=None,
    num_global_tokens: Optional[int] = None,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
    validate: bool = True,
    positions_S: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict]:
    """The micro-batch's share of the step loss, and its metrics.

    logits: [B, S, V] or, under tensor parallel, the rank's [B, S, V/TP] vocabulary shard
    (``tp_group`` the TP group); targets: [B, S] global vocabulary ids of the sampled tokens;
    batch: a TokenBatch after ``compute_credits``; state: the controller state (None: the
    initial one). The per-token losses are summed and divided by ``num_global_tokens`` (default
    ``batch.num_global_tokens``, else this batch's valid-token count), so the losses of all
    micro-batches and DP ranks add up to the step's token mean. ``vocab_size``: the real
    vocabulary when the logits carry padding columns beyond it (they are left out of every softmax).
    ``temperature``: the behaviour temperature T of the rollouts; pi_theta is softmax(logits / T),
    as the batch's pi_old / teacher / pi_ref log-probs must be.

    Parallel layouts: under TP pass the vocabulary shard and the TP group; under DP, pipeline
    or context parallel nothing else is needed, because the credits (computed once per step by
    ``compute_credits`` over the DP group, before any sequence sharding) travel with the batch and
    every term is per token; pass ``num_global_tokens`` if the batch did not come from it.

    Metrics: ``loss/*`` are sums over this micro-batch's tokens divided by the same count
    (add them over micro-batches and DP ranks) and ``rollout/logprob_diff_*`` the same share and
    a max, all as detached 0-d float64 tensors on the logits' device, never read here;
    ``credit/*`` and ``controller/*`` are step values (Python numbers), the same on every rank
    and micro-batch.

    No host synchronisation (docs/design.md#no-host-sync-in-the-micro-batch-loop): nothing here
    reads a device value on the host, except the checks of ``validate``, which are for one-off
    calls: the logits give finite log-probs and entropies, and the targets are vocabulary ids.
    The trainer passes ``validate=False``: it checks the targets once per step and the step's
    loss and gradients for finiteness once, after the backward.

    ``positions_S``: the global positions of the batch's columns when it holds a part of each
    sequence (a context-parallel rank's, the micro-batch's ``cp_columns``): CRINGE's draws are
    seeded by position. None: 0..S-1.
    """
    if batch.advantages is None or batch.credit is None:
        raise ValueError("batch has no credits: call compute_credits(batch, cfg) before policy_loss")
    if cfg.corrects_off_policy and batch.is_weight is None:
        raise ValueError("batch has no off-policy weights: call compute_credits(batch, cfg) with this loss config")
    if state is None:
        state = ControllerState.initial(cfg)
    mask = batch.loss_mask
    n_global = _global_count(num_global_tokens, batch)

    uniforms = None
    if cfg.distill == "cringe":
        sample_ids = (
            batch.sample_ids if batch.sample_ids is not None else torch.arange(batch.batch_size, device=mask.device)
        )
        uniforms = counter_uniforms(cfg.cringe_seed, state.step, sample_ids, mask.shape[1], positions_S)
    stats = vocab_parallel_token_stats(
        logits,
        targets,
        mask,
        tp_group=tp_group,
        chunk_size=cfg.chunk_size,
        cringe_uniforms_BS=uniforms,
        cringe_k=cfg.cringe_k,
        vocab_size=vocab_size,
        temperature=temperature,
        check_targets=validate,
    )
    logp, entropy = stats.logp, stats.entropy
    if validate and not bool(torch.isfinite(logp.detach()).all() & torch.isfinite(entropy.detach()).all()):
        raise ValueError(
            "logits give non-finite log-probs or entropy on valid tokens: they contain NaN or infinite values"
        )

    # The valid tokens in the order of the stats (row-major): gathering by these indices gives
    # the values of x[mask] without the host sync each boolean-mask index costs on a GPU.
    b_N, s_N = stats.index
    # On-policy (logp_old None): pi_old is the policy being trained, so its log-probs are this
    # forward's, detached: the ratio is exactly 1 and its gradient that of logp.
    logp_old = logp.detach() if batch.logp_old is None else batch.logp_old[b_N, s_N].float()
    if batch.logp_teacher is None and cfg.uses_teacher:
        raise ValueError("batch.logp_teacher is None, but this loss reads the teacher (LossConfig.uses_teacher)")
    logp_teacher = None if batch.logp_teacher is None else batch.logp_teacher[b_N, s_N].float()
    logp_ref = batch.logp_ref[b_N, s_N].float()
    credit = batch.credit[b_N, s_N].float()
    advantages = batch.advantages.float()[b_N]
    if cfg.advantage_shaping == "rlsd":
        advantages = terms.rlsd_advantages(
            advantages, batch.delta[b_N, s_N].float(), mix=cfg.rlsd_mix, eps=cfg.rlsd_eps
        )
    if cfg.controller:
        lam, beta = state.lam, state.beta
    else:
        lam, beta = cfg.sd_coef, cfg.kl_coef

    pg, clipped = terms.pg_clip(logp, logp_old, advantages, eps=cfg.clip_eps, dual_clip=cfg.dual_clip)
    is_weight = None
    if cfg.corrects_off_policy:  # off: no operation added, the loss stays bit for bit
        is_weight = batch.is_weight[b_N, s_N]
        pg = pg * is_weight
    per_token = pg + terms.entropy_bonus(entropy, coef=cfg.entropy_coef)
    if cfg.polarized_kl:
        kl = terms.polarized_kl(logp, logp_ref, credit, clamp=cfg.kl_clamp)
    else:
        kl = terms.k3(logp, logp_ref, clamp=cfg.kl_clamp)
    per_token = per_token + beta * kl
    distill = None
    if cfg.distill == "sdar":
        distill = terms.sd_term(logp, logp_teacher, credit, coef=lam)
    elif cfg.distill == "skill_sd":
        distill = terms.skill_sd_term(logp, logp_teacher, logp_old, coef=cfg.skill_sd_coef)
    elif cfg.distill == "cringe":
        delta = batch.delta[b_N, s_N].float()
        cringe = terms.cringe_term(stats.z_target, stats.z_positive, coef=lam)
        sd = terms.sd_term(logp, logp_teacher, credit, coef=lam)
        distill = torch.where(delta > 0, sd, torch.where(delta < 0, cringe, torch.zeros_like(sd)))
    if distill is not None:
        per_token = per_token + distill
    loss = per_token.sum() / n_global

    metrics = _metrics(n_global, logp, logp_ref, entropy, pg, kl, distill, clipped, cfg)
    if batch.logp_rollout is not None:
        logp_behaviour = batch.logp_rollout[b_N, s_N].float()
        metrics.update(_mismatch(logp_old, logp_behaviour, n_global))
        if is_weight is not None:
            metrics.update(weight_metrics(logp_old, logp_behaviour, is_weight, n_global, cfg))
    metrics.update({"controller/lambda": lam, "controller/beta": beta})
    metrics.update({f"credit/{k}": v for k, v in batch.stats.items()})
    return loss, metrics


def _global_count(num_global_tokens: Optional[int], batch: TokenBatch) -> int:
    n = num_global_tokens if num_global_tokens is not None else batch.num_global_tokens
    if n is None:
        n = batch.num_tokens
    if int(n) < 1:
        if batch.num_tokens == 0:
            return 1  # nothing to average; the loss is an exact 0 with zero gradients
        raise ValueError(f"num_global_tokens={n!r}: must be >= the valid tokens of this batch ({batch.num_tokens})")
    return int(n)


@torch.no_grad()
def _mismatch(logp_old: torch.Tensor, logp_rollout: torch.Tensor, n_global: int) -> dict:
    """How far the sampler's log-probs of its tokens are from the trainer's pi_old: the mean
    as a share (add over micro-batches and ranks) and the max (take the max over them)."""
    diff = (logp_old.detach().double() - logp_rollout.double()).abs()
    return {
        "rollout/logprob_diff_mean": diff.sum() / n_global,
        "rollout/logprob_diff_max": diff.max() if diff.numel() else diff.new_zeros(()),
    }


@torch.no_grad()
def _metrics(n_global, logp, logp_ref, entropy, pg, kl, distill, clipped, cfg) -> dict:
    """Each term's share of the step's token mean, as a 0-d float64 tensor (not read here)."""

    def share(x):
        return x.detach().double().sum() / n_global

    out = {
        "loss/kl_ref": share(terms.k3(logp, logp_ref, clamp=cfg.kl_clamp)),
        "loss/entropy": share(entropy),
        "loss/clip_frac": share(clipped),
        "loss/pg": share(pg),
        "loss/kl_term": share(kl),
    }
    if distill is not None:
        out["loss/distill"] = share(distill)
    return out
