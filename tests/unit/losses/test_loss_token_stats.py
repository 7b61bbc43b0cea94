"""vocab_parallel_token_stats in one process (tp_group=None) against full-vocabulary autograd."""

import pytest
import torch

from nemo_craft.parallel.vocab_parallel import counter_uniforms, vocab_parallel_token_stats
from tests.unit.losses._reference import ref_cringe_positive, ref_token_stats


def _inputs(B=3, S=20, V=97, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, S, V, generator=gen)).to(dtype)
    targets = torch.randint(0, V, (B, S), generator=gen)
    mask = torch.rand(B, S, generator=gen) > 0.3
    return logits, targets, mask


def _grads(logits, targets, mask, weights, **kw):
    leaf = logits.clone().requires_grad_(True)
    st = vocab_parallel_token_stats(leaf, targets, mask, **kw)
    outs = [st.logp, st.entropy] + ([st.z_target, st.z_positive] if st.z_target is not None else [])
    sum(w[: o.shape[0]].to(o.dtype) @ o for w, o in zip(weights, outs)).backward()
    return st, leaf.grad


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_values_and_gradients_match_full_vocab_autograd(chunk):
    logits, targets, mask = _inputs()
    n = int(mask.sum())
    weights = [torch.randn(n, dtype=torch.float64) for _ in range(2)]
    st, grad = _grads(logits, targets, mask, weights, chunk_size=chunk)
    leaf = logits.double().requires_grad_(True)
    logp, ent = ref_token_stats(leaf, targets)
    (weights[0] @ logp[mask] + weights[1] @ ent[mask]).backward()
    torch.testing.assert_close(st.logp.double(), logp[mask].detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(st.entropy.double(), ent[mask].detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))  # padding gets exact zeros


@pytest.mark.parametrize("temperature", [0.4, 1.7])
def test_temperature_gives_the_stats_and_gradients_of_scaled_logits(temperature):
    """pi = softmax(logits / T): the same values and gradients (w.r.t. the raw logits) as
    autograd through the division, with no scaled copy of the logits made."""
    logits, targets, mask = _inputs()
    n = int(mask.sum())
    weights = [torch.randn(n, dtype=torch.float64) for _ in range(2)]
    st, grad = _grads(logits, targets, mask, weights, chunk_size=7, temperature=temperature)
    leaf = logits.double().requires_grad_(True)
    logp, ent = ref_token_stats(leaf / temperature, targets)
    (weights[0] @ logp[mask] + weights[1] @ ent[mask]).backward()
    torch.testing.assert_close(st.logp.double(), logp[mask].detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(st.entropy.double(), ent[mask].detach(), rtol=1e-6, atol=1e-5)
    # float32 against float64: the scaled logits are larger, so is the rounding (x 1/T)
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=1e-5, atol=1e-6 / min(temperature, 1.0) ** 2)


def test_temperature_one_is_bit_identical_to_none():
    logits, targets, mask = _inputs()
    n = int(mask.sum())
    weights = [torch.randn(n, dtype=torch.float64) for _ in range(2)]
    a, ga = _grads(logits, targets, mask, weights)
    b, gb = _grads(logits, targets, mask, weights, temperature=1.0)
    assert torch.equal(a.logp, b.logp) and torch.equal(a.entropy, b.entropy) and torch.equal(ga, gb)
    with pytest.raises(ValueError, match="temperature=0"):
        vocab_parallel_token_stats(logits, targets, mask, temperature=0)


def test_chunk_size_does_not_change_bits_on_cpu():
    logits, targets, mask = _inputs(S=40)
    n = int(mask.sum())
    weights = [torch.randn(n, dtype=torch.float64) for _ in range(2)]
    a, ga = _grads(logits, targets, mask, weights, chunk_size=5)
    b, gb = _grads(logits, targets, mask, weights, chunk_size=1000)
    assert torch.equal(a.logp, b.logp) and torch.equal(a.entropy, b.entropy) and torch.equal(ga, gb)


def test_non_contiguous_logits_and_bf16():
    logits, targets, mask = _inputs(dtype=torch.bfloat16)
    n = int(mask.sum())
    weights = [torch.randn(n, dtype=torch.float64) for _ in range(2)]
    st, grad = _grads(logits, targets, mask, weights)
    sbv = logits.transpose(0, 1).contiguous()  # megatron's [S, B, V]
    leaf = sbv.clone().requires_grad_(True)
    st2 = vocab_parallel_token_stats(leaf.transpose(0, 1), targets, mask)
    (weights[0].float() @ st2.logp + weights[1].float() @ st2.entropy).backward()
    assert st.logp.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert torch.equal(st.logp, st2.logp) and torch.equal(grad, leaf.grad.transpose(0, 1))
    ref_logp, ref_ent = ref_token_stats(logits, targets)
    torch.testing.assert_close(st.logp.double(), ref_logp[mask], rtol=1e-6, atol=1e-5)


def test_cringe_draw_and_gradients():
    logits, targets, mask = _inputs(V=31)
    u = counter_uniforms(7, 3, torch.arange(3), 20)
    n = int(mask.sum())
    weights = [torch.zeros(n, dtype=torch.float64)] * 2 + [torch.randn(n, dtype=torch.float64) for _ in range(2)]
    st, grad = _grads(logits, targets, mask, weights, cringe_uniforms_BS=u, cringe_k=5)
    expected = ref_cringe_positive(logits, targets, u, 5)[mask]
    assert torch.equal(st.positive_ids, expected)
    assert not torch.equal(st.positive_ids, targets[mask]) and (st.positive_ids != targets[mask]).all()
    rows = torch.arange(n)
    flat = logits[mask]
    assert torch.equal(st.z_target, flat[rows, targets[mask]]) and torch.equal(st.z_positive, flat[rows, expected])
    leaf = logits.clone().requires_grad_(True)
    zf = leaf[mask]
    (weights[2].float() @ zf[rows, targets[mask]] + weights[3].float() @ zf[rows, expected]).backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-6, atol=1e-7)


def test_counter_uniforms_depend_only_on_seed_step_sample_and_position():
    u = counter_uniforms(1, 2, torch.tensor([5, 9, 11]), 8)
    assert u.shape == (3, 8) and u.dtype == torch.float64 and (u > 0).all() and (u < 1).all()
    assert torch.equal(counter_uniforms(1, 2, torch.tensor([11]), 8)[0], u[2])  # micro-batch split
    assert torch.equal(counter_uniforms(1, 2, torch.tensor([9]), 4)[0], u[1, :4])
    assert not torch.equal(counter_uniforms(1, 3, torch.tensor([5, 9, 11]), 8), u)
    assert not torch.equal(counter_uniforms(2, 2, torch.tensor([5, 9, 11]), 8), u)
    big = counter_uniforms(0, 0, torch.arange(200), 500)
    assert abs(float(big.mean()) - 0.5) < 0.01 and abs(float((big < 0.1).double().mean()) - 0.1) < 0.01


def test_bad_inputs():
    logits, targets, mask = _inputs()
    with pytest.raises(ValueError, match=r"logits must be \[B, S, V/TP\].*\(3, 20, 97\).*\(3, 21\)"):
        vocab_parallel_token_stats(logits, targets, torch.ones(3, 21, dtype=torch.bool))
    bad = targets.clone()
    bad[mask] = 97
    with pytest.raises(ValueError, match=r"targets must be vocabulary ids in \[0, 97\)"):
        vocab_parallel_token_stats(logits, bad, mask)
    with pytest.raises(ValueError, match="targets must be integer"):
        vocab_parallel_token_stats(logits, targets.float(), mask)


def _peak_bytes(fn):
    """Peak bytes allocated on the CPU while ``fn`` runs (profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for _, nbytes in sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    ):
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_memory_stays_within_a_quarter_above_the_logits(dtype):
    """docs/algorithm.md#parallelism-contract / the memory target: forward + backward of the loss
    hold the logits' gradient plus two float32 chunk buffers, at most 1.25x the logits for 4k
    tokens (naive: about 5x)."""
    from nemo_craft.losses import LossConfig, compute_credits, policy_loss
    from tests.unit.losses._reference import make_batch

    raw = make_batch(n_groups=16, group_size=8, seq=32, seed=0)  # 128 x 32 = 4096 tokens
    targets = torch.randint(0, 512, raw.loss_mask.shape)
    cfg = LossConfig.preset("craft")
    batch = compute_credits(raw, cfg)
    leaf = torch.randn(*raw.loss_mask.shape, 512).to(dtype).requires_grad_(True)
    peak = _peak_bytes(lambda: policy_loss(leaf, targets, batch, cfg)[0].backward())
    ratio = peak / (leaf.numel() * leaf.element_size())
    assert 1.0 <= ratio <= 1.25, ratio
