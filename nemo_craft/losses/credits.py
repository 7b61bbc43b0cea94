"""Per-step credits from detached rollout data: GRPO advantages, Delta, gate, CTI, credit.

Shape letters: B samples, S tokens, N action tokens, T (sample, turn) units, U sibling keys.

``compute_credits`` runs once per step, before any update, on the rank's whole step batch
(every micro-batch), with ``dp_group`` the data-parallel group (None in one process: the
same code without collectives). It costs O(tokens) and no forward pass; all sibling sums go
through ``nemo_craft.parallel.sibling_stats`` and are bit-identical for any DP layout. When
every sibling group is on one rank (the trainer's layout: a task's G rollouts stay on the rank
that drew it; ``groups_are_local`` checks it with one small all-reduce), the sums are taken
locally and nothing is gathered; only the step's counts are all-reduced.
"""

from __future__ import annotations

import dataclasses

import torch

from nemo_craft.losses.batch import TokenBatch
from nemo_craft.losses.config import LossConfig
from nemo_craft.losses.off_policy import behaviour_weights
from nemo_craft.parallel.reductions import reduce_named
from nemo_craft.parallel.sibling_stats import gather_table, groups_are_local, sibling_sums

__all__ = ["compute_credits", "grpo_advantages", "counterfactual_token_importance", "gate_from_delta"]


def gate_from_delta(delta: torch.Tensor, gate_beta: float) -> torch.Tensor:
    """g = sigmoid(beta_g * Delta), written as 1 / (1 + exp(-x)): torch.sigmoid's CPU kernel
    rounds the last elements of a tensor differently from the rest, so its bits would depend
    on how tokens are split over ranks; exp, + and / do not."""
    return 1.0 / (1.0 + torch.exp(-gate_beta * delta))


def grpo_advantages(
    rewards_B: torch.Tensor, group_ids_B: torch.Tensor, *, eps: float = 1e-6, dp_group=None
) -> tuple[torch.Tensor, int]:
    """A_i = (R_i - mean_j R_j) / (std_unbiased_j R_j + eps) over each group's siblings
    (docs/algorithm.md#group-advantage-grpo).

    Siblings on other DP ranks are included. A group with one sibling has no std: its A is 0.
    Returns (advantages [B] float32, number of one-sibling groups in the whole step).
    """
    table = gather_table(group_ids_B[:, None], rewards_B[:, None], dp_group)
    counts = table.counts.double()
    mean = table.row_sums()[:, 0] / counts.clamp(min=1)
    dev = table.values[:, 0] - mean[table.row]
    std = torch.sqrt(table.row_sums((dev * dev)[:, None])[:, 0] / (counts - 1).clamp(min=1))
    rows = table.local_rows
    adv = (rewards_B.double() - mean[rows]) / (std[rows] + eps)
    adv = torch.where(table.counts[rows] > 1, adv, 0.0)
    return adv.float(), int((table.counts == 1).sum())


def counterfactual_token_importance(
    delta_BS,
    advantages_B,
    mask_BS,
    group_ids_B,
    turn_ids_BS,
    pos_in_turn_BS,
    *,
    align: str = "turn_position",
    clip: float = 5.0,
    tau: float = 1.0,
    dp_group=None,
):
    """CTI of Pillar 1 (docs/algorithm.md#pillar-1-counterfactual-credit-from-siblings), with
    leave-one-out by subtraction.

        w_j = exp(clamp(Delta_j, -C, C) / tau)
        CTI_i = sum_{j != i} m_j w_j A_j / sum_{j != i} m_j w_j - A_i

    Siblings are aligned by (group, turn, position) ("turn_position") or by (group, turn) with
    the turn's mean Delta ("turn_mean"). Returns float64 tensors
    (cti [B, S], defined [B, S] bool, ess [B, S]); where no other sibling shares the key,
    ``defined`` is False and cti = ess = 0. ess = (sum_{j != i} w_j)^2 / sum_{j != i} w_j^2.
    """
    b_N, s_N = torch.nonzero(mask_BS, as_tuple=True)
    turn_N = turn_ids_BS[b_N, s_N]
    if align == "turn_position":
        pos_N = pos_in_turn_BS[b_N, s_N]
        _check_unique(torch.stack([b_N, turn_N, pos_N], 1), "(turn_ids, pos_in_turn)")
        keys = torch.stack([group_ids_B[b_N], turn_N, pos_N], 1)
        delta_U, sample_U, unit_of_N = delta_BS[b_N, s_N].double(), b_N, None
    elif align == "turn_mean":
        turn = gather_table(torch.stack([b_N, turn_N], 1), delta_BS[b_N, s_N][:, None])
        n_turn = turn.counts.shape[0]
        first = torch.full((n_turn,), b_N.shape[0], dtype=torch.long, device=b_N.device)
        first.scatter_reduce_(0, turn.row, torch.arange(b_N.shape[0], device=b_N.device), "amin")
        present = turn.counts > 0  # one representative token per (sample, turn)
        first = first[present]
        delta_U = (turn.row_sums()[:, 0] / turn.counts.clamp(min=1).double())[present]
        unit_of_N = torch.cumsum(present.long(), 0)[turn.row] - 1
        sample_U = b_N[first]
        keys = torch.stack([group_ids_B[sample_U], turn_N[first]], 1)
    else:
        raise ValueError(f"align={align!r}: must be 'turn_position' or 'turn_mean'")

    adv_U = advantages_B.double()[sample_U]
    w_U = torch.exp(delta_U.clamp(-clip, clip) / tau)
    loo, counts = sibling_sums(keys, torch.stack([w_U * adv_U, w_U, w_U * w_U], 1), dp_group, leave_one_out=True)
    defined_U = (counts > 1) & (loo[:, 1] > 0)
    cti_U = torch.where(defined_U, loo[:, 0] / loo[:, 1] - adv_U, 0.0)
    ess_U = torch.where(defined_U, loo[:, 1] * loo[:, 1] / loo[:, 2], 0.0)
    if unit_of_N is not None:
        cti_U, defined_U, ess_U = cti_U[unit_of_N], defined_U[unit_of_N], ess_U[unit_of_N]
    cti = torch.zeros(mask_BS.shape, dtype=torch.float64, device=mask_BS.device)
    ess = torch.zeros_like(cti)
    defined = torch.zeros_like(mask_BS)
    cti[b_N, s_N], ess[b_N, s_N], defined[b_N, s_N] = cti_U, ess_U, defined_U
    return cti, defined, ess


def compute_credits(batch: TokenBatch, cfg: LossConfig, dp_group=None) -> TokenBatch:
    """Fill advantages, delta, gate, cti and credit of ``batch`` (a new TokenBatch).

    Also sets ``num_global_tokens`` and ``stats`` (identical on every DP rank): num_tokens,
    gate_activity (fraction of action tokens with Delta > 0), frac_pos_credit,
    frac_neg_credit, n_singleton_groups, and with Pillar 1 mean_abs_cti, ess and
    n_fallback_tokens (tokens with no sibling at their key, where c = g).
    """
    mask = batch.loss_mask
    local = groups_are_local(batch.group_ids, dp_group)
    sibling_group = None if local else dp_group  # rank-local siblings: the same sums without a gather
    adv, n_singleton = grpo_advantages(batch.rewards, batch.group_ids, eps=cfg.adv_eps, dp_group=sibling_group)
    if batch.logp_teacher is None or batch.logp_old is None:
        if cfg.uses_teacher:
            missing = "logp_teacher" if batch.logp_teacher is None else "logp_old"
            raise ValueError(
                f"batch.{missing} is None, but this loss reads the teacher-student gap "
                "(LossConfig.uses_teacher): run the teacher and old log-prob passes"
            )
        delta = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    else:
        delta = torch.where(mask, batch.logp_teacher.float() - batch.logp_old.float(), 0.0)
    gate = gate_from_delta(delta, cfg.gate_beta)
    cti = None
    credit = gate
    counts = {}
    if cfg.counterfactual:
        cti64, defined, ess = counterfactual_token_importance(
            delta,
            adv,
            mask,
            batch.group_ids,
            batch.turn_ids,
            batch.pos_in_turn,
            align=cfg.align,
            clip=cfg.cti_clip,
            tau=cfg.cti_tau,
            dp_group=sibling_group,
        )
        cti = cti64.float()
        credit = gate.clone()
        credit[defined] = gate[defined] * torch.tanh(cti64[defined] / cfg.cti_kappa).float()
        n_defined = defined.sum()
        counts = {
            "abs_cti": cti64[defined].abs().sum(),
            "ess": ess[defined].sum(),
            "defined": n_defined,
            "fallback": mask.sum() - n_defined,
        }
    valid_credit = credit[mask]
    counts.update(
        tokens=mask.sum(),
        gate_on=(delta[mask] > 0).sum(),
        pos_credit=(valid_credit > 0).sum(),
        neg_credit=(valid_credit < 0).sum(),
    )
    if local:  # this rank's one-sibling groups are its own: add them up with the counts
        counts["singleton_groups"] = n_singleton
    total = reduce_named(counts, dp_group, device=mask.device)
    if local:
        n_singleton = int(total["singleton_groups"])
    n_tokens = int(total["tokens"])
    per_token = 1.0 / max(n_tokens, 1)
    stats = {
        "num_tokens": n_tokens,
        "gate_activity": total["gate_on"] * per_token,
        "frac_pos_credit": total["pos_credit"] * per_token,
        "frac_neg_credit": total["neg_credit"] * per_token,
        "n_singleton_groups": n_singleton,
    }
    if cfg.counterfactual:
        n_def = max(total["defined"], 1.0)
        stats.update(
            mean_abs_cti=total["abs_cti"] / n_def, ess=total["ess"] / n_def, n_fallback_tokens=int(total["fallback"])
        )
    is_weight = None
    if cfg.corrects_off_policy:
        if batch.logp_old is None or batch.logp_rollout is None:
            missing = "logp_old" if batch.logp_old is None else "logp_rollout"
            raise ValueError(
                f"batch.{missing} is None, but loss.off_policy={cfg.off_policy!r} / loss.seq_mask={cfg.seq_mask} "
                "weighs pi_old against the behaviour log-probs: run the old pass and keep the sampler's log-probs"
            )
        is_weight = behaviour_weights(batch.logp_old, batch.logp_rollout, mask, cfg)
    return dataclasses.replace(
        batch,
        advantages=adv,
        delta=delta,
        gate=gate,
        cti=cti,
        credit=credit,
        is_weight=is_weight,
        num_global_tokens=n_tokens,
        stats=stats,
    )


def _check_unique(keys_NK: torch.Tensor, what: str) -> None:
    if keys_NK.shape[0] and int(gather_table(keys_NK, keys_NK[:, :0].double()).counts.max()) > 1:
        raise ValueError(
            f"two action tokens of one sample share {what}; each token of a sample "
            "needs its own (turn, position) for align='turn_position'"
        )
