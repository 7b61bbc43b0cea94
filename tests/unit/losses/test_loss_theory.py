"""docs/algorithm.md#what-the-theory-promises-as-tests on a synthetic K-armed bandit: CTI's
self-normalised importance-sampling estimate of E_pi~[A] is consistent, within the Agapiou et al.
(2017) MSE and bias bounds, and agrees in sign with the exact counterfactual change more often as
G grows.

pi_theta and the teacher pi_T are known; the tilted policy is
pi~ proportional to pi_theta^(1 - 1/tau) * pi_T^(1/tau). The teacher likes two arms that are bad.
"""

import math

import pytest
import torch

from nemo_craft.losses import LossConfig, TokenBatch, compute_credits, counterfactual_token_importance

REWARD = torch.tensor([1.0, 0.9, 0.2, 0.0, 0.0, 0.6, 0.1, 0.8, 0.3, 0.0], dtype=torch.float64)
LOGIT_THETA = torch.tensor([0.3, -0.2, 0.8, 0.1, -0.5, 0.0, 0.6, -0.8, 0.2, 0.4], dtype=torch.float64)
LOGIT_TEACHER = torch.tensor([1.5, 0.5, -0.5, 1.8, 1.2, 0.3, -1.0, 0.8, -0.6, -0.4], dtype=torch.float64)
GROUP_SIZES = (4, 16, 64, 256, 1024)


def _replicates(G):
    """Independent groups per G: many for small G, about 65k siblings in all for large G."""
    return min(300, max(40, 65536 // G))


def _bandit(tau):
    log_pi = torch.log_softmax(LOGIT_THETA, 0)
    log_t = torch.log_softmax(LOGIT_TEACHER, 0)
    delta = log_t - log_pi
    assert delta.abs().max() < 5.0  # the clamp at C is inactive: the tilt is exact
    tilted = torch.softmax((1 - 1 / tau) * log_pi + log_t / tau, 0)
    pi = log_pi.exp()
    adv = REWARD - (pi * REWARD).sum()  # a fixed per-arm advantage, |A| <= A_max
    w = torch.exp(delta / tau)
    d2 = float((pi * w * w).sum() / (pi * w).sum() ** 2)
    return pi, delta, adv, float((tilted * adv).sum()), d2


def _estimates(G, tau, gen):
    pi, delta, adv, exact, d2 = _bandit(tau)
    reps = _replicates(G)
    arms = torch.multinomial(pi.expand(reps, -1), G, replacement=True, generator=gen).reshape(-1)
    n = arms.shape[0]
    one = torch.ones(n, 1, dtype=torch.bool)
    cti, defined, ess = counterfactual_token_importance(
        delta[arms][:, None],
        adv[arms],
        one,
        torch.arange(reps).repeat_interleave(G),
        torch.zeros(n, 1, dtype=torch.long),
        torch.zeros(n, 1, dtype=torch.long),
        tau=tau,
    )
    assert defined.all()
    estimate = cti[:, 0] + adv[arms]  # = sum_{j != i} w_j A_j / sum_{j != i} w_j
    return estimate, cti[:, 0], adv[arms], exact, d2, ess[:, 0]


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_consistency_variance_bound_and_sign_agreement(tau):
    gen = torch.Generator().manual_seed(0)
    _, _, adv, _, d2 = _bandit(tau)
    a_max = float(adv.abs().max())
    assert d2 <= math.exp(2 * 5.0 / tau)
    rows, mses, agree = [], [], []
    for G in GROUP_SIZES:
        est, cti, adv_i, exact, d2, ess = _estimates(G, tau, gen)
        err = est - exact
        mse, bias = float((err**2).mean()), float(err.mean())
        # the i's of one replicate share siblings: the standard error uses replicate means
        reps = _replicates(G)
        se = float(err.view(reps, G).mean(1).std() / math.sqrt(reps))
        mse_bound = 4 * a_max**2 * d2 / (G - 1)
        bias_bound = 2 * a_max * d2 / (G - 1)
        true_change = exact - adv_i
        sign_ok = float((torch.sign(cti) == torch.sign(true_change)).double().mean())
        rows.append((G, mse, mse_bound, bias, bias_bound, sign_ok, float(ess.mean())))
        mses.append(mse)
        agree.append(sign_ok)
        assert mse <= mse_bound, f"G={G}: MSE {mse:.3g} above the bound {mse_bound:.3g}"
        assert abs(bias) <= bias_bound + 4 * se, f"G={G}: bias {bias:.3g} above {bias_bound:.3g}"
    print(f"\nbandit tau={tau}: E_pi~[A] exact, d2={d2:.3f}, A_max={a_max:.3f}")
    print(f"{'G':>5} {'MSE':>10} {'MSE bound':>10} {'bias':>10} {'bias bound':>10} {'sign agree':>10} {'mean ESS':>9}")
    for r in rows:
        print(f"{r[0]:>5} {r[1]:>10.2e} {r[2]:>10.2e} {r[3]:>+10.2e} {r[4]:>10.2e} {r[5]:>10.3f} {r[6]:>9.1f}")
    assert all(b < a for a, b in zip(mses, mses[1:])), f"MSE does not shrink with G: {mses}"
    assert mses[-1] < 0.02 * mses[0]
    assert agree[-1] >= 0.97 and agree[-1] > agree[0]


def test_grpo_normalised_end_to_end_sign_agreement():
    """Through compute_credits (rewards -> GRPO advantages -> CTI): the sign of CTI matches the
    exact change E_pi~[A] - A_i with A the population-normalised advantage, more often with G."""
    gen = torch.Generator().manual_seed(1)
    log_pi = torch.log_softmax(LOGIT_THETA, 0)
    pi = log_pi.exp()
    delta = torch.log_softmax(LOGIT_TEACHER, 0) - log_pi
    mu = (pi * REWARD).sum()
    sigma = ((pi * (REWARD - mu) ** 2).sum()).sqrt()
    exact = float((torch.softmax(LOGIT_TEACHER, 0) * (REWARD - mu) / sigma).sum())
    cfg = LossConfig.preset("craft")
    agree = []
    for G in (4, 64, 1024):
        reps = 30
        arms = torch.multinomial(pi.expand(reps, -1), G, replacement=True, generator=gen).reshape(-1)
        n = arms.shape[0]
        batch = compute_credits(
            TokenBatch(
                logp_old=log_pi[arms][:, None].float(),
                logp_teacher=(log_pi + delta)[arms][:, None].float(),
                logp_ref=torch.zeros(n, 1),
                loss_mask=torch.ones(n, 1, dtype=torch.bool),
                rewards=REWARD[arms].float(),
                group_ids=torch.arange(reps).repeat_interleave(G),
                turn_ids=torch.zeros(n, 1, dtype=torch.long),
                pos_in_turn=torch.zeros(n, 1, dtype=torch.long),
            ),
            cfg,
        )
        change = exact - ((REWARD[arms] - mu) / sigma)
        agree.append(float((torch.sign(batch.cti[:, 0].double()) == torch.sign(change)).double().mean()))
    print(f"\nGRPO-normalised sign agreement for G = 4, 64, 1024: {agree}")
    assert agree[-1] >= 0.95 and agree[-1] > agree[0]
