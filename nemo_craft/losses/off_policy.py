"""Off-policy correction: the weight of each token's policy-gradient term for the behaviour policy
that sampled it (docs/async.md#off-policy-correction).

Shape letters: B trajectories, S tokens, N valid tokens.

Under asynchronous RL (or any train/inference mismatch) the tokens were drawn by the engine's
policy mu, which reported log mu for each; the trainer's pi_old (the proximal policy, recomputed
at the step's weights) differs from it. The weight is w = pi_old / mu = exp(logp_old - logp_mu),
detached, and ``LossConfig.off_policy`` picks what multiplies the token's PPO term:

    tis        min(w, C)                              truncated importance sampling
    icepop     w if low <= w <= high, else 0          tokens outside the band are masked
    decoupled  w if w <= C, else 0                    the decoupled proximal-policy objective:
                                                      PPO's ratio against pi_old, times w

``seq_mask`` zeroes whole trajectories whose geometric-mean weight exp(mean_t log w) is outside
[seq_low, seq_high]. The weights are computed once per step over whole trajectories (before any
micro-batch or context-parallel split), so a sequence's mean never sees a part of it.
"""

from __future__ import annotations

import torch

from nemo_craft.losses.config import LossConfig

__all__ = ["behaviour_weights", "weight_metrics"]


def behaviour_weights(
    logp_old_BS: torch.Tensor, logp_behaviour_BS: torch.Tensor, mask_BS: torch.Tensor, cfg: LossConfig
) -> torch.Tensor:
    """[B, S] float32 weight of each token's policy-gradient term; 0 off the mask."""
    log_w_BS = torch.where(mask_BS, logp_old_BS.float() - logp_behaviour_BS.float(), 0.0)
    w_BS = torch.exp(log_w_BS)
    if cfg.off_policy == "tis":
        weight_BS = torch.clamp(w_BS, max=cfg.is_cap)
    elif cfg.off_policy == "icepop":
        weight_BS = torch.where((w_BS >= cfg.is_low) & (w_BS <= cfg.is_high), w_BS, 0.0)
    elif cfg.off_policy == "decoupled":
        weight_BS = torch.where(w_BS <= cfg.is_cap, w_BS, 0.0)
    else:
        weight_BS = torch.ones_like(w_BS)
    if cfg.seq_mask:
        keep_B = sequence_kept(log_w_BS, mask_BS, cfg.seq_low, cfg.seq_high)
        weight_BS = torch.where(keep_B[:, None], weight_BS, 0.0)
    return torch.where(mask_BS, weight_BS, 0.0)


def sequence_kept(log_w_BS: torch.Tensor, mask_BS: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[B] bool: the trajectory's geometric-mean weight exp(mean of log w over its tokens) is in
    [low, high] (a trajectory without valid tokens is kept: it has nothing to mask)."""
    n_B = mask_BS.sum(1).clamp(min=1)
    geo_B = torch.exp(log_w_BS.double().sum(1) / n_B)
    return (geo_B >= low) & (geo_B <= high)


@torch.no_grad()
def weight_metrics(
    logp_old_N: torch.Tensor, logp_behaviour_N: torch.Tensor, weight_N: torch.Tensor, n_global: int, cfg: LossConfig
) -> dict:
    """``off_policy/*`` of a micro-batch as 0-d float64 tensors: shares of the step's token mean
    (add over micro-batches and ranks) and the max (take the max): the raw weight w's mean and
    max, the tokens whose weight was truncated and those masked (weight 0)."""
    w_N = torch.exp(logp_old_N.double() - logp_behaviour_N.double())
    truncated_N = (w_N > cfg.is_cap) & (weight_N > 0) if cfg.off_policy == "tis" else torch.zeros_like(w_N)
    return {
        "off_policy/weight_mean": w_N.sum() / n_global,
        "off_policy/weight_max": w_N.max() if w_N.numel() else w_N.new_zeros(()),
        "off_policy/clip_frac": truncated_N.double().sum() / n_global,
        "off_policy/mask_frac": (weight_N == 0).double().sum() / n_global,
    }
