"""The off-policy correction (losses/off_policy.py): off is today's loss bit for bit; each form's
loss, gradient and ``off_policy/*`` metrics against the float64 reference; a hand computation;
negative controls."""

import dataclasses
import math

import pytest
import torch

from nemo_craft.losses import LossConfig, TokenBatch, compute_credits, credits, policy_loss
from tests.unit.losses._reference import bits_equal, composed_sdar_loss, make_batch, ref_terms
from tests.unit.losses.test_loss_presets import check_logged_terms

V = 37
S = 16


def _setup(seed=0, dtype=torch.float32, spread=0.6):
    """A batch whose sampler log-probs are pi_old's plus noise of ``spread`` (the mismatch)."""
    raw = make_batch(n_groups=2, group_size=4, seq=S, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 7)
    logits = (2 * torch.randn(raw.batch_size, S, V, generator=gen)).to(dtype)
    targets = torch.randint(0, V, (raw.batch_size, S), generator=gen)
    lp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    old = lp + 0.2 * torch.randn(lp.shape, generator=gen)
    raw = dataclasses.replace(
        raw,
        logp_old=old.to(dtype),
        logp_ref=(lp + 0.5 * torch.randn(lp.shape, generator=gen)).to(dtype),
        logp_teacher=(lp + torch.randn(lp.shape, generator=gen)).to(dtype),
        logp_rollout=(old + spread * torch.randn(lp.shape, generator=gen)).to(dtype),
    )
    return raw, logits, targets


def _run(fn, logits):
    leaf = logits.clone().requires_grad_(True)
    loss, metrics = fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad, metrics


def _loss(raw, logits, targets, cfg):
    return _run(lambda x: policy_loss(x, targets, compute_credits(raw, cfg), cfg), logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_off_is_todays_loss_bit_for_bit(dtype):
    raw, logits, targets = _setup(dtype=dtype)
    cfg = LossConfig.preset("craft", controller=False)
    assert not cfg.corrects_off_policy
    loss, grad, metrics = _loss(raw, logits, targets, cfg)
    unmonitored, unmonitored_grad, _ = _loss(dataclasses.replace(raw, logp_rollout=None), logits, targets, cfg)
    assert bits_equal(loss, unmonitored) and bits_equal(grad, unmonitored_grad)
    batch = compute_credits(raw, cfg)
    composed, composed_grad, _ = _run(
        lambda x: (
            composed_sdar_loss(x, targets, batch, cfg, lam=0.01, beta=0.01, credit=batch.credit, polarized=True),
            {},
        ),
        logits,
    )
    assert bits_equal(loss, composed) and bits_equal(grad, composed_grad)
    assert not any(k.startswith("off_policy/") for k in metrics)
    on, _, _ = _loss(raw, logits, targets, dataclasses.replace(cfg, off_policy="tis"))
    assert not bits_equal(on, loss)  # the comparison can fail


@pytest.mark.parametrize("form", ["tis", "icepop", "decoupled"])
def test_a_weight_of_one_changes_no_bit(form):
    """The sampler's log-probs equal to pi_old's (w = 1, inside every band): each form's loss and
    gradient are the uncorrected ones, bit for bit."""
    raw, logits, targets = _setup(seed=1)
    raw = dataclasses.replace(raw, logp_rollout=raw.logp_old.clone())
    base = LossConfig.preset("craft")
    off = _loss(raw, logits, targets, base)
    on = _loss(raw, logits, targets, dataclasses.replace(base, off_policy=form, seq_mask=True))
    assert bits_equal(off[0], on[0]) and bits_equal(off[1], on[1])
    assert float(on[2]["off_policy/weight_mean"]) * int(raw.loss_mask.sum()) == pytest.approx(raw.loss_mask.sum())


FORMS = [
    dict(off_policy="tis"),
    dict(off_policy="tis", is_cap=1.2, seq_mask=True, seq_low=0.9, seq_high=1.1),
    dict(off_policy="icepop"),
    dict(off_policy="icepop", is_low=0.8, is_high=1.25),
    dict(off_policy="decoupled", is_cap=1.5),
    dict(off_policy="none", seq_mask=True, seq_low=0.9, seq_high=1.1),
]


def _against_reference(fields, seed=0):
    raw, logits, targets = _setup(seed)
    cfg = LossConfig.preset("sdar", **fields)
    batch = compute_credits(raw, cfg)
    loss, grad, metrics = _run(lambda x: policy_loss(x, targets, batch, cfg), logits)
    ref_leaf = logits.double().requires_grad_(True)
    ref = ref_terms(ref_leaf, targets, batch, cfg, lam=cfg.sd_coef, beta=cfg.kl_coef, credit=batch.credit)
    ref["loss"].backward()
    return (loss, grad, metrics), (ref["loss"].detach(), ref_leaf.grad, {k: v for k, v in ref.items() if k != "loss"})


@pytest.mark.parametrize("fields", FORMS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_each_form_matches_the_reference(fields):
    (loss, grad, metrics), (ref_loss, ref_grad, expected) = _against_reference(fields)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-8)
    check_logged_terms(metrics, expected)
    # the data exercise the form: some tokens are truncated or masked, not all
    moved = expected["off_policy/clip_frac"] + expected["off_policy/mask_frac"]
    assert 0.0 < moved < 1.0, expected


def test_the_reference_check_fires_on_a_wrong_weight(monkeypatch):
    """Negative controls: weights with pi_old and mu swapped, and the metrics of another form,
    are caught."""
    fields = dict(off_policy="tis")
    (loss, _, metrics), (ref_loss, _, expected) = _against_reference(fields)
    real = credits.behaviour_weights
    monkeypatch.setattr(credits, "behaviour_weights", lambda old, mu, m, c: real(mu, old, m, c))
    (wrong, _, _), _ = _against_reference(fields)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong.double(), ref_loss, rtol=2e-6, atol=1e-7)
    monkeypatch.undo()
    (_, _, icepop_metrics), _ = _against_reference(dict(off_policy="icepop", is_low=0.8, is_high=1.25))
    weight_terms = {k: v for k, v in expected.items() if k.startswith("off_policy/")}
    check_logged_terms(metrics, weight_terms)
    with pytest.raises(AssertionError, match="off_policy/"):
        check_logged_terms(icepop_metrics, weight_terms)


def _hand_batch(log_w):
    """One trajectory of three action tokens, pi_old's log-prob -1 on each, the sampler's
    -1 - log w; rewards of a two-sibling group so the advantage is not 0."""
    n = len(log_w)
    old = torch.full((2, n), -1.0)
    mu = old - torch.tensor([log_w, [0.0] * n])
    return TokenBatch(
        logp_old=old,
        logp_teacher=old.clone(),
        logp_ref=old.clone(),
        loss_mask=torch.ones(2, n, dtype=torch.bool),
        rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
        turn_ids=torch.zeros(2, n, dtype=torch.long),
        pos_in_turn=torch.arange(n).expand(2, n).clone(),
        logp_rollout=mu,
    )


@pytest.mark.parametrize(
    "fields,expected",
    [
        (dict(off_policy="tis", is_cap=2.0), [2.0, 1.0, 0.25]),
        (dict(off_policy="icepop", is_low=0.5, is_high=2.0), [0.0, 1.0, 0.0]),
        (dict(off_policy="decoupled", is_cap=2.0), [0.0, 1.0, 0.25]),
        # geometric mean (3 * 1 * 0.25)^(1/3) = 0.909: kept in [0.5, 2], masked in [0.95, 1.05]
        (dict(seq_mask=True, seq_low=0.5, seq_high=2.0), [1.0, 1.0, 1.0]),
        (dict(seq_mask=True, seq_low=0.95, seq_high=1.05), [0.0, 0.0, 0.0]),
    ],
)
def test_weights_by_hand(fields, expected):
    batch = compute_credits(_hand_batch([math.log(3.0), 0.0, math.log(0.25)]), LossConfig.preset("grpo", **fields))
    torch.testing.assert_close(batch.is_weight[0], torch.tensor(expected), rtol=1e-6, atol=0.0)
    assert torch.equal(batch.is_weight[1], torch.ones(3))  # the sibling was sampled on-policy


def test_bad_config_and_missing_inputs_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"loss.off_policy='is': must be one of 'none', 'tis', 'icepop'"):
        LossConfig(off_policy="is")
    with pytest.raises(ValueError, match=r"loss.is_cap=0.5: must be a finite number in \[1.0, inf\]"):
        LossConfig(is_cap=0.5)
    with pytest.raises(ValueError, match=r"loss.seq_low=1.5: must be a finite number in \[0.0, 1.0\]"):
        LossConfig(seq_low=1.5)
    with pytest.raises(ValueError, match="loss.seq_mask='yes': must be true or false"):
        LossConfig(seq_mask="yes")
    cfg = LossConfig.preset("grpo", off_policy="tis")
    assert cfg.needs_old_logprobs and not LossConfig.preset("grpo").needs_old_logprobs
    raw = _hand_batch([0.1, 0.2])
    with pytest.raises(ValueError, match="batch.logp_rollout is None, but loss.off_policy='tis'"):
        compute_credits(dataclasses.replace(raw, logp_rollout=None), cfg)
    with pytest.raises(ValueError, match="batch.logp_old is None"):
        compute_credits(dataclasses.replace(raw, logp_old=None), cfg)
    with pytest.raises(ValueError, match="no off-policy weights"):
        policy_loss(torch.zeros(2, 2, 5), torch.zeros(2, 2, dtype=torch.long), compute_credits(raw, LossConfig()), cfg)
