"""The loss terms of docs/algorithm.md, over per-token log-probs; none sees parallelism.

Shape letter: N valid (action) tokens, flattened. Every input is [N]; ``logp`` (and CRINGE's
logits) carry the gradient, everything else is detached. Each term returns the per-token loss
[N] and declares its reduction (``fn.reduction``): all are "token_mean", i.e. summed over the
step's valid tokens and divided by the global valid-token count by ``policy_loss``.

The order of operations inside each function is part of the contract: docs/algorithm.md#the-switch-contract asks
for bit-identical losses with a pillar switched off, and each switch selects a whole function
(never a blend), so a term's arithmetic must not change between methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "pg_clip",
    "entropy_bonus",
    "k3",
    "forward_kl_surrogate",
    "polarized_kl",
    "sd_term",
    "skill_sd_term",
    "cringe_term",
    "rlsd_advantages",
]


def _token_mean(fn):
    fn.reduction = "token_mean"
    return fn


@_token_mean
def pg_clip(logp, logp_old, advantages, *, eps: float, dual_clip: float):
    """PPO clipped surrogate with dual clip on negative advantages.

    ratio r = exp(logp - logp_old); loss = max(-A r, -A clip(r, 1-eps, 1+eps)), and for A < 0
    at most -A * dual_clip. Returns (loss [N], clipped [N] bool: the clipped branch was taken).
    """
    ratio = torch.exp(logp - logp_old)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
    clipped_loss = torch.maximum(loss1, loss2)
    dual = torch.minimum(clipped_loss, -advantages * dual_clip)
    loss = torch.where(advantages < 0, dual, clipped_loss)
    return loss, (loss2 > loss1).detach()


@_token_mean
def entropy_bonus(entropy, *, coef: float):
    """-h * H: rewards a high full-vocabulary entropy H [N]."""
    return -coef * entropy


def _log_ratio(logp, logp_ref, clamp: float):
    return torch.clamp(logp_ref - logp, -clamp, clamp)


@_token_mean
def k3(logp, logp_ref, *, clamp: float):
    """k3 = rho - log(rho) - 1, rho = exp(clamp(logp_ref - logp)): KL(pi || pi_ref), mode-seeking."""
    log_rho = _log_ratio(logp, logp_ref, clamp)
    return torch.exp(log_rho) - log_rho - 1.0


@_token_mean
def forward_kl_surrogate(logp, logp_ref, *, clamp: float):
    """rho * log(rho) - rho + 1, same rho as k3: the mode-covering surrogate of Pillar 3."""
    log_rho = _log_ratio(logp, logp_ref, clamp)
    rho = torch.exp(log_rho)
    return rho * log_rho - rho + 1.0


@_token_mean
def polarized_kl(logp, logp_ref, credit, *, clamp: float):
    """Pillar 3: k3 where credit >= 0, the forward-KL surrogate where credit < 0."""
    return torch.where(credit < 0, forward_kl_surrogate(logp, logp_ref, clamp=clamp), k3(logp, logp_ref, clamp=clamp))


@_token_mean
def sd_term(logp, logp_teacher, credit, *, coef: float):
    """lambda * c * (logp_T - logp); its gradient is -lambda * c * grad(logp)."""
    return coef * credit * (logp_teacher - logp)


@_token_mean
def skill_sd_term(logp, logp_teacher, logp_old, *, coef: float):
    """Skill-SD: coef * rho_on * (exp(-u) - 1 + u), u = logp - logp_T, rho_on = exp(logp - logp_old)
    detached."""
    u = logp - logp_teacher
    rho_on = torch.exp(logp.detach() - logp_old)
    return coef * rho_on * (torch.exp(-u) - 1.0 + u)


@_token_mean
def cringe_term(z_target, z_positive, *, coef: float):
    """CRINGE push-down: lambda * softplus(z_y - z_s) for a sampled positive token s."""
    return coef * F.softplus(z_target - z_positive)


def rlsd_advantages(advantages, delta, *, mix: float, eps: float):
    """RLSD's per-token advantage A * ((1 - l) + l * clip(exp(sign(A) * Delta), 1 - e, 1 + e))."""
    scale = torch.clamp(torch.exp(torch.sign(advantages) * delta), 1.0 - eps, 1.0 + eps)
    return advantages * ((1.0 - mix) + mix * scale)
