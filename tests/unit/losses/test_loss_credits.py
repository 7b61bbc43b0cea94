"""GRPO advantages, CTI and credits against hand-computed values and loop references."""

import math

import pytest
import torch

from nemo_craft.losses import LossConfig, TokenBatch, compute_credits, counterfactual_token_importance
from tests.unit.losses._reference import make_batch, ref_advantages, ref_cti

CRAFT = LossConfig.preset("craft")


def _one_token_group(rewards, deltas, groups=None, pos=None):
    """One action token per sample at (turn 0, pos 0) unless ``pos`` says otherwise."""
    b = len(rewards)
    return TokenBatch(
        logp_old=torch.zeros(b, 1),
        logp_teacher=torch.tensor(deltas, dtype=torch.float32)[:, None],
        logp_ref=torch.zeros(b, 1),
        loss_mask=torch.ones(b, 1, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.tensor(groups if groups is not None else [0] * b),
        turn_ids=torch.zeros(b, 1, dtype=torch.long),
        pos_in_turn=torch.tensor(pos if pos is not None else [0] * b)[:, None],
    )


def test_cti_hand_computed_leave_one_out():
    # R = (1, 0, 0): A = (2, -1, -1)/sqrt(3); Delta = (0, ln 2, 0): w = (1, 2, 1)
    batch = compute_credits(_one_token_group([1.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0]), CRAFT)
    r3 = math.sqrt(3.0)
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(
        batch.advantages.double(), torch.tensor([2 / r3, -1 / r3, -1 / r3], **f64), atol=1e-5, rtol=0
    )
    # CTI_0 = (2 A_1 + A_2)/3 - A_0 = -sqrt 3 ; CTI_1 = (A_0 + A_2)/2 - A_1 = sqrt(3)/2 ;
    # CTI_2 = (A_0 + 2 A_1)/3 - A_2 = 1/sqrt 3
    torch.testing.assert_close(batch.cti[:, 0].double(), torch.tensor([-r3, r3 / 2, 1 / r3], **f64), atol=1e-5, rtol=0)
    gate = torch.sigmoid(5.0 * torch.tensor([0.0, math.log(2.0), 0.0]))
    torch.testing.assert_close(batch.credit[:, 0], gate * torch.tanh(batch.cti[:, 0]), atol=1e-6, rtol=0)
    assert batch.credit[0, 0] < 0 < batch.credit[1, 0]  # signed: trajectory 0 is pushed away
    assert batch.stats["frac_neg_credit"] == pytest.approx(1 / 3)
    # ESS of the leave-one-out weights: (1+2)^2/(1+4) = 9/5 for i=2, (1+1)^2/2 = 2 for i=1
    assert batch.stats["ess"] == pytest.approx((9 / 5 + 2 + 9 / 5) / 3)


def test_cti_weights_clamped_at_C():
    deltas = [0.0, 30.0, 0.0]  # exp(30) would dominate; clamped to exp(5)
    batch = compute_credits(_one_token_group([1.0, 0.0, 2.0], deltas), CRAFT)
    a = batch.advantages.double()
    w1 = math.exp(5.0)
    assert float(batch.cti[0, 0]) == pytest.approx(float((w1 * a[1] + a[2]) / (w1 + 1) - a[0]), abs=1e-5)


def test_singleton_group_and_no_sibling_at_position_fall_back_to_the_gate():
    # group 0: three samples, sample 2's token sits at pos 1 where nobody else has one;
    # group 1: one sample (A = 0, CTI undefined).
    batch = compute_credits(
        _one_token_group([1.0, 0.0, 0.5, 3.0], [0.3, -0.2, 0.1, 0.4], groups=[0, 0, 0, 1], pos=[0, 0, 1, 0]), CRAFT
    )
    assert batch.stats["n_singleton_groups"] == 1 and batch.stats["n_fallback_tokens"] == 2
    assert float(batch.advantages[3]) == 0.0
    assert torch.equal(batch.credit[2:], batch.gate[2:]) and torch.equal(batch.cti[2:], torch.zeros(2, 1))
    a = batch.advantages.double()
    assert float(batch.cti[0, 0]) == pytest.approx(float(a[1] - a[0]), abs=1e-6)  # one sibling: its A


def test_turn_mean_uses_the_turns_mean_delta_for_every_token():
    # two samples, turn 0 of lengths 3 and 1, Delta means 0.2 and -1.0
    b = TokenBatch(
        logp_old=torch.zeros(2, 3),
        logp_teacher=torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0.0, 0.0]]),
        logp_ref=torch.zeros(2, 3),
        loss_mask=torch.tensor([[True, True, True], [True, False, False]]),
        rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
        turn_ids=torch.zeros(2, 3, dtype=torch.long),
        pos_in_turn=torch.tensor([[0, 1, 2], [0, 0, 0]]),
    )
    mean_cfg = LossConfig.preset("craft", align="turn_mean")
    out = compute_credits(b, mean_cfg)
    a = out.advantages.double()
    # every token of sample 0's turn: one sibling (sample 1) -> CTI = A_1 - A_0, whatever the position
    assert torch.allclose(out.cti[0].double(), (a[1] - a[0]).expand(3), atol=1e-6)
    assert float(out.cti[1, 0]) == pytest.approx(float(a[0] - a[1]), abs=1e-6)
    pos = compute_credits(b, CRAFT)  # turn_position: positions 1, 2 of sample 0 have no sibling
    assert pos.stats["n_fallback_tokens"] == 2 and out.stats["n_fallback_tokens"] == 0
    # weights differ: with three siblings the turn mean enters w
    b3 = TokenBatch(
        logp_old=torch.zeros(3, 2),
        logp_teacher=torch.tensor([[0.0, 0.0], [1.0, 3.0], [0.5, 0.0]]),
        logp_ref=torch.zeros(3, 2),
        loss_mask=torch.tensor([[True, False], [True, True], [True, False]]),
        rewards=torch.tensor([1.0, 0.0, 4.0]),
        group_ids=torch.zeros(3, dtype=torch.long),
        turn_ids=torch.zeros(3, 2, dtype=torch.long),
        pos_in_turn=torch.tensor([[0, 0], [0, 1], [0, 0]]),
    )
    out3 = compute_credits(b3, mean_cfg)
    a = out3.advantages.double()
    w1, w2 = math.exp(2.0), math.exp(0.5)
    assert float(out3.cti[0, 0]) == pytest.approx(float((w1 * a[1] + w2 * a[2]) / (w1 + w2) - a[0]), abs=1e-5)


@pytest.mark.parametrize("align", ["turn_position", "turn_mean"])
def test_cti_and_credit_match_the_loop_reference(align):
    raw = make_batch(n_groups=3, group_size=4, seq=20, seed=1, singleton=True)
    cfg = LossConfig.preset("craft", align=align, cti_tau=0.7, cti_kappa=0.5)
    out = compute_credits(raw, cfg)
    adv = ref_advantages(raw.rewards, raw.group_ids)
    torch.testing.assert_close(out.advantages.double(), adv, atol=1e-6, rtol=1e-6)
    ref = ref_cti(raw, out.advantages.double(), align=align, tau=0.7)
    n_fallback = 0
    for (b, s), cti in ref.items():
        g = float(out.gate[b, s])
        if cti is None:
            n_fallback += 1
            assert float(out.credit[b, s]) == g and float(out.cti[b, s]) == 0.0
        else:
            assert float(out.cti[b, s]) == pytest.approx(cti, abs=1e-5, rel=1e-5)
            assert float(out.credit[b, s]) == pytest.approx(g * math.tanh(cti / 0.5), abs=1e-6)
    assert out.stats["n_fallback_tokens"] == n_fallback > 0
    assert out.stats["n_singleton_groups"] == 1
    mask = raw.loss_mask
    active = (raw.logp_teacher[mask] > raw.logp_old[mask]).double().mean()
    assert out.stats["gate_activity"] == pytest.approx(float(active))


def test_switch_off_leaves_the_gate_as_credit():
    raw = make_batch(seed=2)
    out = compute_credits(raw, LossConfig.preset("sdar"))
    assert out.cti is None and out.credit is out.gate
    mask = raw.loss_mask
    gate = torch.sigmoid(5.0 * (raw.logp_teacher.float() - raw.logp_old.float()))
    torch.testing.assert_close(out.gate[mask], gate[mask], rtol=1e-6, atol=1e-7)
    assert "mean_abs_cti" not in out.stats and out.stats["frac_neg_credit"] == 0.0
    assert out.num_global_tokens == int(mask.sum())
    opsd = compute_credits(raw, LossConfig.preset("grpo_opsd"))
    assert torch.equal(opsd.credit[mask], torch.full_like(opsd.credit[mask], 0.5))


def test_credits_do_not_depend_on_sample_order_bitwise():
    raw = make_batch(n_groups=4, group_size=8, seq=30, seed=3)
    out = compute_credits(raw, CRAFT)
    perm = torch.randperm(raw.batch_size, generator=torch.Generator().manual_seed(0))
    out_p = compute_credits(raw.select(perm), CRAFT)
    for name in ("advantages", "delta", "gate", "cti", "credit"):
        a, b = getattr(out, name)[perm], getattr(out_p, name)
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name


def test_duplicate_positions_are_rejected():
    raw = make_batch(seed=4)
    pos = raw.pos_in_turn.clone()
    pos[:] = 0
    import dataclasses

    with pytest.raises(ValueError, match="share \\(turn_ids, pos_in_turn\\)"):
        compute_credits(dataclasses.replace(raw, pos_in_turn=pos), CRAFT)


def test_counterfactual_function_returns_ess_and_defined():
    raw = _one_token_group([1.0, 0.0], [0.0, 0.0], groups=[0, 0])
    adv = torch.tensor([1.0, -1.0])
    cti, defined, ess = counterfactual_token_importance(
        raw.logp_teacher, adv, raw.loss_mask, raw.group_ids, raw.turn_ids, raw.pos_in_turn
    )
    assert cti.dtype == torch.float64 and defined.all()
    assert torch.equal(cti[:, 0], torch.tensor([-2.0, 2.0], dtype=torch.float64))
    assert torch.equal(ess[:, 0], torch.ones(2, dtype=torch.float64))
