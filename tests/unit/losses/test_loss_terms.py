"""Each term function against its formula in docs/algorithm.md, on hand-picked tokens."""

import math

import pytest
import torch

from nemo_craft.losses import terms


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_every_term_declares_token_mean_reduction():
    for name in (
        "pg_clip",
        "entropy_bonus",
        "k3",
        "forward_kl_surrogate",
        "polarized_kl",
        "sd_term",
        "skill_sd_term",
        "cringe_term",
    ):
        assert getattr(terms, name).reduction == "token_mean"


def test_pg_clip_cases():
    lo = t(0.0, 0.0, 0.0, 0.0, 0.0)
    logp = t(math.log(1.5), math.log(0.5), math.log(1.1), math.log(5.0), math.log(1.5))
    adv = t(1.0, -1.0, 2.0, -1.0, -1.0)
    loss, clipped = terms.pg_clip(logp, lo, adv, eps=0.2, dual_clip=3.0)
    # r=1.5,A=1: min(1.5, 1.2) -> -1.2 ; r=0.5,A=-1: max(0.5, 0.8) = 0.8 ; r=1.1 unclipped: -2.2
    # r=5,A=-1: max(5, 1.2) = 5 capped by dual clip at 3 ; r=1.5,A=-1: 1.5 (below 3)
    torch.testing.assert_close(loss, t(-1.2, 0.8, -2.2, 3.0, 1.5))
    assert clipped.tolist() == [True, True, False, False, False]


def _dists(seed, v=9):
    """Three random full distributions over v tokens (log-probs, float64): pi, pi_ref, pi_old."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.log_softmax(2 * torch.randn(v, generator=gen, dtype=torch.float64), 0) for _ in range(3)]


def _kl(logp, logq):
    """KL(p || q) from the definition: sum_x p(x) log(p(x) / q(x))."""
    return float((logp.exp() * (logp - logq)).sum())


def check_kl_estimators(k3, forward_kl, skill_sd, seed=0):
    """The per-token terms are estimators of KLs of whole distributions (docs/algorithm.md):
    E_{x~pi}[k3] = KL(pi || pi_ref) and E_{x~pi}[forward surrogate] = KL(pi_ref || pi), with
    rho = pi_ref / pi; Skill-SD's importance-weighted term, drawn from pi_old, has expectation
    KL(pi || pi_T). Each expectation is the float64 sum over the full vocabulary."""
    logp, logq, logp_old = _dists(seed)
    pi, pi_old = logp.exp(), logp_old.exp()
    assert float((pi * k3(logp, logq, clamp=50.0)).sum()) == pytest.approx(_kl(logp, logq), rel=1e-9)
    assert float((pi * forward_kl(logp, logq, clamp=50.0)).sum()) == pytest.approx(_kl(logq, logp), rel=1e-9)
    coef = 0.001
    sampled = skill_sd(logp, logq, logp_old, coef=coef)  # logq plays the teacher pi_T
    assert float((pi_old * sampled).sum()) == pytest.approx(coef * _kl(logp, logq), rel=1e-9)


def test_kl_terms_estimate_the_kls_of_the_full_distributions():
    for seed in range(3):
        check_kl_estimators(terms.k3, terms.forward_kl_surrogate, terms.skill_sd_term, seed)


def _k3_inverted_ratio(logp, logp_ref, *, clamp):
    log_rho = torch.clamp(logp - logp_ref, -clamp, clamp)  # pi / pi_ref: the ratio upside down
    return torch.exp(log_rho) - log_rho - 1.0


def _skill_sd_unweighted(logp, logp_teacher, logp_old, *, coef):
    u = logp - logp_teacher
    return coef * (torch.exp(-u) - 1.0 + u)  # without the importance weight pi / pi_old


@pytest.mark.parametrize(
    "broken",
    [
        dict(k3=_k3_inverted_ratio),
        dict(k3=terms.forward_kl_surrogate),
        dict(forward_kl=terms.k3),
        dict(skill_sd=_skill_sd_unweighted),
    ],
    ids=["k3-inverted-ratio", "k3-is-forward", "forward-is-k3", "skill-sd-unweighted"],
)
def test_the_kl_check_fires_on_a_wrong_estimator(broken):
    """Negative controls: the expectation check above rejects each wrong estimator."""
    fns = dict(k3=terms.k3, forward_kl=terms.forward_kl_surrogate, skill_sd=terms.skill_sd_term) | broken
    with pytest.raises(AssertionError):
        check_kl_estimators(**fns)


def test_kl_clamp_and_polarization():
    logp = t(-1.0, -2.0, -0.5, -3.0)
    ref = t(-1.5, -1.0, -0.5, -30.0)  # last: log ratio -27 clamped at -10
    k3, fwd = terms.k3(logp, ref, clamp=10.0), terms.forward_kl_surrogate(logp, ref, clamp=10.0)
    assert float(k3[3]) == pytest.approx(math.exp(-10.0) + 10.0 - 1.0, rel=1e-12)
    assert float(fwd[3]) == pytest.approx(math.exp(-10.0) * -10.0 - math.exp(-10.0) + 1.0, rel=1e-12)
    assert float(k3[2]) == 0.0 == float(fwd[2])  # KL of equal log-probs
    credit = t(0.3, -0.2, 0.0, -1.0)
    pol = terms.polarized_kl(logp, ref, credit, clamp=10.0)
    torch.testing.assert_close(pol, torch.stack([k3[0], fwd[1], k3[2], fwd[3]]))


def test_sd_skill_cringe_entropy_rlsd():
    logp, lt, lo = t(-1.0, -2.0), t(-0.5, -2.5), t(-1.2, -1.9)
    torch.testing.assert_close(terms.sd_term(logp, lt, t(0.5, -1.0), coef=0.01), 0.01 * t(0.5 * 0.5, -1.0 * -0.5))
    # Skill-SD on hand-picked tokens: 0.001 * (pi / pi_old) * (pi_T / pi - 1 + log(pi / pi_T))
    expect = [
        0.001 * math.exp(a - c) * (math.exp(b - a) - 1 + (a - b))
        for a, b, c in ((-1.0, -0.5, -1.2), (-2.0, -2.5, -1.9))
    ]
    torch.testing.assert_close(terms.skill_sd_term(logp, lt, lo, coef=0.001), t(*expect))
    torch.testing.assert_close(terms.cringe_term(t(2.0), t(1.0), coef=0.1), 0.1 * t(math.log1p(math.e)))
    torch.testing.assert_close(terms.entropy_bonus(t(2.0), coef=0.001), t(-0.002))
    adv, delta = t(1.0, -2.0, 1.0, -2.0, 0.0), t(0.1, 0.1, -1.0, -1.0, 0.3)
    shaped = terms.rlsd_advantages(adv, delta, mix=0.5, eps=0.2)
    # clip(exp(sign(A) * Delta), 0.8, 1.2): exp(0.1), exp(-0.1), 0.8 (clipped), 1.2 (clipped), A = 0
    expect = [
        0.5 + 0.5 * math.exp(0.1),
        -2.0 * (0.5 + 0.5 * math.exp(-0.1)),
        0.5 + 0.5 * 0.8,
        -2.0 * (0.5 + 0.5 * 1.2),
        0.0,
    ]
    torch.testing.assert_close(shaped, t(*expect))


def test_gradients_of_the_distillation_terms():
    logp = t(-1.0, -2.0).requires_grad_(True)
    terms.sd_term(logp, t(-0.5, -2.5), t(0.5, -1.0), coef=0.01).sum().backward()
    torch.testing.assert_close(logp.grad, t(-0.005, 0.01))  # -lambda * c
    logp.grad = None
    terms.skill_sd_term(logp, t(-0.5, -2.5), t(-1.0, -2.0), coef=1.0).sum().backward()
    u = logp.detach() - t(-0.5, -2.5)
    torch.testing.assert_close(logp.grad, 1 - torch.exp(-u))  # rho_on = 1, detached


@pytest.mark.parametrize("fn", [terms.k3, terms.forward_kl_surrogate])
def test_kl_gradient_vanishes_outside_the_clamp(fn):
    logp = t(0.0).requires_grad_(True)
    fn(logp, t(-50.0), clamp=10.0).sum().backward()
    assert float(logp.grad) == 0.0
