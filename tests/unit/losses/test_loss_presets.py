"""Every preset's loss and gradient against the float64 token-by-token reference of docs/algorithm.md."""

import pytest
import torch

from nemo_craft.losses import PRESETS, ControllerState, LossConfig, compute_credits, policy_loss, terms
from nemo_craft.parallel.vocab_parallel import counter_uniforms, vocab_parallel_token_stats
from tests.unit.losses._reference import make_batch, ref_credit_stats, ref_cringe_positive, ref_terms

V = 41


def _setup(seed=0, **kw):
    raw = make_batch(n_groups=2, group_size=4, seq=16, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed + 100)
    logits = 2 * torch.randn(raw.batch_size, 16, V, generator=gen)
    targets = torch.randint(0, V, (raw.batch_size, 16), generator=gen)
    # put the rollout log-probs near the policy's so the ratio is not always clipped
    lp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    import dataclasses

    raw = dataclasses.replace(
        raw,
        logp_old=lp + 0.2 * torch.randn(lp.shape, generator=gen),
        logp_ref=lp + 0.5 * torch.randn(lp.shape, generator=gen),
        logp_teacher=lp + torch.randn(lp.shape, generator=gen),
    )
    return raw, logits, targets


def _against_reference(name, seed=0):
    """(logged metrics, float64 reference values, loss, reference loss, both logits gradients)."""
    raw, logits, targets = _setup(seed)
    cfg = LossConfig.preset(name)
    state = ControllerState.initial(cfg).update(0.9).update(0.8)  # weights away from the base
    batch = compute_credits(raw, cfg)
    leaf = logits.clone().requires_grad_(True)
    loss, metrics = policy_loss(leaf, targets, batch, cfg, state)
    loss.backward()
    lam, beta = (state.lam, state.beta) if cfg.controller else (cfg.sd_coef, cfg.kl_coef)
    assert metrics["controller/lambda"] == lam and metrics["controller/beta"] == beta
    cringe_pos = None
    if cfg.distill == "cringe":
        u = counter_uniforms(cfg.cringe_seed, state.step, torch.arange(raw.batch_size), 16)
        cringe_pos = ref_cringe_positive(logits, targets, u, cfg.cringe_k)
    ref_leaf = logits.double().requires_grad_(True)
    ref = ref_terms(ref_leaf, targets, batch, cfg, lam=lam, beta=beta, credit=batch.credit, cringe_pos=cringe_pos)
    ref["loss"].backward()
    expected = {k: v for k, v in ref.items() if k != "loss"} | ref_credit_stats(raw, cfg)
    return metrics, expected, (loss, ref["loss"].detach()), (leaf.grad, ref_leaf.grad)


def check_logged_terms(metrics, expected):
    """Every logged loss and credit term equals its float64 reference value; no term is missing."""
    assert set(expected) <= set(metrics), sorted(set(expected) - set(metrics))
    for key, value in expected.items():
        assert float(metrics[key]) == pytest.approx(value, rel=1e-5, abs=1e-7), (key, float(metrics[key]), value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_reference(name):
    metrics, expected, (loss, ref), (grad, ref_grad) = _against_reference(name)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-8)
    check_logged_terms(metrics, expected)
    # the reference covers each logged term this preset has (a new term needs a reference value)
    logged = {k for k in metrics if k.startswith("loss/")} | {"credit/frac_pos_credit", "credit/gate_activity"}
    assert logged <= set(expected), sorted(logged - set(expected))
    if LossConfig.preset(name).counterfactual:
        assert metrics["credit/ess"] >= 1.0 and expected["credit/mean_abs_cti"] > 0


@pytest.mark.parametrize("key", ["loss/pg", "loss/entropy", "loss/kl_ref", "loss/clip_frac", "credit/mean_abs_cti"])
def test_the_term_check_fires_on_a_wrong_value(key):
    """Negative control: each logged term 0.1% off its reference (or missing) fails the check."""
    metrics, expected, _, _ = _against_reference("craft")
    check_logged_terms(metrics, expected)
    with pytest.raises(AssertionError):
        check_logged_terms({**metrics, key: float(metrics[key]) * 1.001 + 1e-6}, expected)
    with pytest.raises(AssertionError):
        check_logged_terms({k: v for k, v in metrics.items() if k != key}, expected)


def test_the_term_check_fires_on_a_wrong_implementation(monkeypatch):
    """Negative control: the loss computing its logged KL with the forward surrogate, or with the
    distillation term's sign flipped, is caught by the reference."""
    monkeypatch.setattr(terms, "k3", terms.forward_kl_surrogate)
    metrics, expected, _, _ = _against_reference("sdar")
    with pytest.raises(AssertionError, match="loss/kl_ref"):
        check_logged_terms(metrics, expected)
    monkeypatch.undo()
    real = terms.sd_term
    monkeypatch.setattr(terms, "sd_term", lambda *a, **k: -real(*a, **k))
    metrics, expected, _, _ = _against_reference("sdar")
    with pytest.raises(AssertionError, match="loss/distill"):
        check_logged_terms(metrics, expected)


def test_craft_really_has_negative_credits_and_the_forward_kl():
    raw, logits, targets = _setup(seed=3)
    cfg = LossConfig.preset("craft")
    batch = compute_credits(raw, cfg)
    assert (batch.credit[raw.loss_mask] < 0).any() and (batch.credit[raw.loss_mask] > 0).any()
    loss_pol, _ = policy_loss(logits, targets, batch, cfg)
    loss_k3, _ = policy_loss(logits, targets, batch, LossConfig.preset("craft", polarized_kl=False))
    assert not torch.equal(loss_pol, loss_k3)


def test_metrics_add_up_over_micro_batches():
    raw, logits, targets = _setup(seed=5)
    cfg = LossConfig.preset("craft")
    batch = compute_credits(raw, cfg)
    full, m_full = policy_loss(logits, targets, batch, cfg)
    parts = [
        policy_loss(logits[i : i + 3], targets[i : i + 3], batch.select(slice(i, i + 3)), cfg)
        for i in range(0, raw.batch_size, 3)
    ]
    torch.testing.assert_close(sum(p[0] for p in parts), full, rtol=1e-6, atol=1e-7)
    for key in ("loss/kl_ref", "loss/entropy", "loss/clip_frac", "loss/pg"):
        # the metrics are device tensors (read once per step by the trainer)
        assert float(sum(p[1][key] for p in parts)) == pytest.approx(float(m_full[key]), rel=1e-9, abs=1e-12)
    assert all(p[1]["credit/gate_activity"] == m_full["credit/gate_activity"] for p in parts)


def test_cringe_draw_changes_with_the_step_only():
    raw, logits, targets = _setup(seed=6)
    cfg = LossConfig.preset("adaptive_cringe")
    batch = compute_credits(raw, cfg)
    s0 = ControllerState.initial(cfg)
    a, _ = policy_loss(logits, targets, batch, cfg, s0)
    b, _ = policy_loss(logits, targets, batch, cfg, s0)
    c, _ = policy_loss(logits, targets, batch, cfg, s0.update(0.5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_empty_batch_gives_zero_loss_and_zero_gradient():
    raw, logits, targets = _setup()
    import dataclasses

    batch = compute_credits(dataclasses.replace(raw, loss_mask=torch.zeros_like(raw.loss_mask)), LossConfig())
    leaf = logits.clone().requires_grad_(True)
    loss, _ = policy_loss(leaf, targets, batch, LossConfig())
    loss.backward()
    assert float(loss.detach()) == 0.0 and not leaf.grad.any()


def test_bad_inputs_raise_clear_errors():
    raw, logits, targets = _setup()
    cfg = LossConfig.preset("craft")
    with pytest.raises(ValueError, match="call compute_credits"):
        policy_loss(logits, targets, raw, cfg)
    batch = compute_credits(raw, cfg)
    bad = logits.clone()
    bad[raw.loss_mask.nonzero()[0][0], raw.loss_mask.nonzero()[0][1], 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite log-probs"):
        policy_loss(bad, targets, batch, cfg)
    with pytest.raises(ValueError, match=r"logits must be \[B, S, V/TP\]"):
        policy_loss(logits[:, :5], targets, batch, cfg)
    import dataclasses

    for name in ("logp_old", "logp_teacher", "logp_ref"):
        t = getattr(raw, name).clone()
        t[raw.loss_mask] = float("nan")
        with pytest.raises(ValueError, match=f"{name} contains NaN"):
            dataclasses.replace(raw, **{name: t})
    padded_nan = raw.logp_old.clone()
    padded_nan[~raw.loss_mask] = float("nan")  # padding may hold anything: accepted, and it changes nothing
    loss_nan, _ = policy_loss(logits, targets, compute_credits(dataclasses.replace(raw, logp_old=padded_nan), cfg), cfg)
    assert torch.equal(loss_nan, policy_loss(logits, targets, batch, cfg)[0])
    with pytest.raises(ValueError, match="rewards contains NaN"):
        dataclasses.replace(raw, rewards=torch.full_like(raw.rewards, float("nan")))
    with pytest.raises(ValueError, match=r"logp_ref has shape \(8, 15\), expected \(8, 16\)"):
        dataclasses.replace(raw, logp_ref=raw.logp_ref[:, :15])
    with pytest.raises(ValueError, match=r"rewards has shape \(7,\), expected \(8,\)"):
        dataclasses.replace(raw, rewards=raw.rewards[:7])
    with pytest.raises(ValueError, match="loss_mask must be a \\[B, S\\] bool tensor"):
        dataclasses.replace(raw, loss_mask=raw.loss_mask.float())
    with pytest.raises(ValueError, match="group_ids must be an integer tensor"):
        dataclasses.replace(raw, group_ids=raw.group_ids.float())
    with pytest.raises(ValueError, match="turn_ids must be >= 0"):
        dataclasses.replace(raw, turn_ids=raw.turn_ids - 5)


def _step_outcome(cfg, raw, logits, targets, logp_teacher):
    """Loss, logits gradient and the next step's (lambda, beta) with these teacher log-probs."""
    import dataclasses

    batch = compute_credits(dataclasses.replace(raw, logp_teacher=logp_teacher), cfg)
    state = ControllerState.initial(cfg)
    x = logits.clone().requires_grad_(True)
    loss, _ = policy_loss(x, targets, batch, cfg, state)
    loss.backward()
    nxt = state.update(batch.stats["gate_activity"])
    return loss.detach(), x.grad, (nxt.lam, nxt.beta)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_uses_teacher_says_whether_the_teacher_changes_the_step(name):
    """The trainer skips the teacher pass when ``uses_teacher`` is False: that must be exactly
    the presets whose loss, gradient and next controller weights ignore the teacher."""
    raw, logits, targets = _setup()
    cfg = LossConfig.preset(name)
    gen = torch.Generator().manual_seed(5)
    a = _step_outcome(cfg, raw, logits, targets, raw.logp_teacher)
    b = _step_outcome(cfg, raw, logits, targets, raw.logp_teacher + torch.randn(raw.logp_teacher.shape, generator=gen))
    same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert same == (not cfg.uses_teacher), (name, cfg.uses_teacher)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_an_on_policy_batch_is_the_batch_with_the_policys_own_logprobs(name):
    """Without the teacher the trainer runs no old-log-prob pass either (``logp_old`` None, one
    optimizer step per rollout): the loss, gradient and next controller weights must be those of
    a batch whose pi_old is the trained policy itself; a preset that reads the teacher refuses."""
    import dataclasses

    raw, logits, targets = _setup()
    cfg = LossConfig.preset(name)
    # the policy's log-probs as the trainer's old pass computes them (the loss's own token stats)
    stats = vocab_parallel_token_stats(logits, targets, raw.loss_mask, tp_group=None, chunk_size=cfg.chunk_size)
    own = torch.zeros(raw.loss_mask.shape)
    own[raw.loss_mask] = stats.logp
    if cfg.uses_teacher:
        with pytest.raises(ValueError, match="batch.logp_teacher is None, but this loss reads the teacher-student gap"):
            compute_credits(dataclasses.replace(raw, logp_old=None, logp_teacher=None), cfg)
        return
    full = _step_outcome(cfg, dataclasses.replace(raw, logp_old=own), logits, targets, own)
    on_policy = _step_outcome(cfg, dataclasses.replace(raw, logp_old=None), logits, targets, None)
    assert torch.equal(full[0], on_policy[0]) and torch.equal(full[1], on_policy[1]) and full[2] == on_policy[2]


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_logprob_mismatch_metric_is_the_samplers_distance_from_pi_old(shift):
    """``rollout/logprob_diff_*``, the oracle of every "the engine was refit" test: 0 for the
    sampler's own log-probs, and a known offset on one token shows as the max and in the mean."""
    import dataclasses

    raw, logits, targets = _setup(seed=7)
    mask = raw.loss_mask
    b, s = mask.nonzero()[3].tolist()
    rollout = raw.logp_old.clone()
    rollout[b, s] -= shift
    cfg = LossConfig.preset("craft")
    batch = compute_credits(dataclasses.replace(raw, logp_rollout=rollout), cfg)
    _, metrics = policy_loss(logits, targets, batch, cfg)
    # pi_old's log-probs are float32: the diff is exact up to the float32 rounding of the shift
    assert float(metrics["rollout/logprob_diff_max"]) == pytest.approx(shift, abs=1e-6)
    assert float(metrics["rollout/logprob_diff_mean"]) == pytest.approx(shift / int(mask.sum()), abs=1e-8)
    if shift:
        # the offset on a padding position is not a sampled token: it must not count
        pad_b, pad_s = (~mask).nonzero()[0].tolist()
        rollout[pad_b, pad_s] += 5.0
        batch = compute_credits(dataclasses.replace(raw, logp_rollout=rollout), cfg)
        assert float(policy_loss(logits, targets, batch, cfg)[1]["rollout/logprob_diff_max"]) < shift + 1e-6
