"""docs/algorithm.md#the-switch-contract: a switch that is off gives the loss and gradient of the method without
that pillar, bit for bit (raw bits compared), in float32 and bf16; all off is SDAR."""

import dataclasses
import itertools

import pytest
import torch

from nemo_craft.losses import ControllerState, LossConfig, compute_credits, policy_loss
from nemo_craft.parallel.vocab_parallel import vocab_parallel_token_stats
from tests.unit.losses._reference import bits_equal, composed_sdar_loss, make_batch

V = 53


def _data(dtype, seed=0):
    raw = make_batch(n_groups=3, group_size=4, seq=18, seed=seed, dtype=dtype, singleton=True)
    gen = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(raw.batch_size, 18, V, generator=gen)).to(dtype)
    targets = torch.randint(0, V, (raw.batch_size, 18), generator=gen)
    lp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    ref = lp + 0.3 * torch.randn(lp.shape, generator=gen)
    exact = vocab_parallel_token_stats(logits, targets, torch.ones_like(raw.loss_mask)).logp.view(lp.shape)
    ref[:, ::5] = exact[:, ::5]
    raw = dataclasses.replace(
        raw, logp_old=(lp + 0.2 * torch.randn(lp.shape, generator=gen)).to(dtype), logp_ref=ref.to(dtype)
    )  # some tokens with logp_ref == logp exactly
    return raw, logits, targets


def _run(fn, logits):
    leaf = logits.clone().requires_grad_(True)
    loss = fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cf,ctrl,pol", list(itertools.product([False, True], repeat=3)))
def test_each_switch_off_equals_that_pillar_absent(dtype, cf, ctrl, pol):
    raw, logits, targets = _data(dtype)
    cfg = LossConfig.preset("craft", counterfactual=cf, controller=ctrl, polarized_kl=pol)
    state = ControllerState.initial(cfg).update(0.95).update(0.9)
    batch = compute_credits(raw, cfg)
    loss, grad = _run(lambda x: policy_loss(x, targets, batch, cfg, state)[0], logits)

    mask = raw.loss_mask
    delta = torch.where(mask, raw.logp_teacher.float() - raw.logp_old.float(), 0.0)
    gate = 1.0 / (1.0 + torch.exp(-cfg.gate_beta * delta))  # sigmoid, as compute_credits writes it
    credit = compute_credits(raw, LossConfig.preset("craft")).credit if cf else gate
    lam, beta = (state.lam, state.beta) if ctrl else (0.01, 0.01)
    if ctrl:
        assert (lam, beta) != (0.01, 0.01)
    ref_loss, ref_grad = _run(
        lambda x: composed_sdar_loss(x, targets, batch, cfg, lam=lam, beta=beta, credit=credit, polarized=pol), logits
    )
    assert bits_equal(loss, ref_loss) and bits_equal(grad, ref_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_switches_off_is_sdar(dtype):
    raw, logits, targets = _data(dtype, seed=1)
    off = LossConfig.preset("craft", counterfactual=False, controller=False, polarized_kl=False)
    sdar = LossConfig.preset("sdar")
    state = ControllerState.initial(off).update(1.0)  # a moved controller must not matter when off
    b_off, b_sdar = compute_credits(raw, off), compute_credits(raw, sdar)
    for name in ("advantages", "delta", "gate", "credit"):
        assert bits_equal(getattr(b_off, name), getattr(b_sdar, name))
    loss_off, grad_off = _run(lambda x: policy_loss(x, targets, b_off, off, state)[0], logits)
    loss_sdar, grad_sdar = _run(lambda x: policy_loss(x, targets, b_sdar, sdar)[0], logits)
    assert bits_equal(loss_off, loss_sdar) and bits_equal(grad_off, grad_sdar)
    craft = LossConfig.preset("craft")
    loss_on, _ = _run(lambda x: policy_loss(x, targets, compute_credits(raw, craft), craft, state)[0], logits)
    assert not bits_equal(loss_on, loss_sdar)  # the comparison can fail


def test_same_inputs_twice_are_bit_identical():
    raw, logits, targets = _data(torch.float32, seed=2)
    cfg = LossConfig.preset("craft")
    a = _run(lambda x: policy_loss(x, targets, compute_credits(raw, cfg), cfg)[0], logits)
    b = _run(lambda x: policy_loss(x, targets, compute_credits(raw, cfg), cfg)[0], logits)
    assert bits_equal(a[0], b[0]) and bits_equal(a[1], b[1])
