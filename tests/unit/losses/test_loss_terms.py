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


def test_kl_terms_and_polarization():
    logp = t(-1.0, -2.0, -0.5, -3.0)
    ref = t(-1.5, -1.0, -0.5, -30.0)  # last: log ratio clamped at -10
    d = (ref - logp).clamp(-10, 10)
    rho = d.exp()
    k3 = rho - torch.log(rho) - 1
    fwd = rho * torch.log(rho) - rho + 1
    torch.testing.assert_close(terms.k3(logp, ref, clamp=10.0), k3)
    torch.testing.assert_close(terms.forward_kl_surrogate(logp, ref, clamp=10.0), fwd)
    credit = t(0.3, -0.2, 0.0, -1.0)
    pol = terms.polarized_kl(logp, ref, credit, clamp=10.0)
    torch.testing.assert_close(pol, torch.stack([k3[0], fwd[1], k3[2], fwd[3]]))
    assert float(terms.k3(t(-1.0), t(-1.0), clamp=10.0)) == 0.0  # KL of equal log-probs


def test_sd_skill_cringe_entropy_rlsd():
    logp, lt, lo = t(-1.0, -2.0), t(-0.5, -2.5), t(-1.2, -1.9)
    torch.testing.assert_close(terms.sd_term(logp, lt, t(0.5, -1.0), coef=0.01), 0.01 * t(0.5 * 0.5, -1.0 * -0.5))
    u = logp - lt
    torch.testing.assert_close(
        terms.skill_sd_term(logp, lt, lo, coef=0.001), 0.001 * torch.exp(logp - lo) * (torch.exp(-u) - 1 + u)
    )
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
