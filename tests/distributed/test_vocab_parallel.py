"""Vocabulary-parallel log-prob, entropy and CRINGE top-k at TP 1, 2, 4 against full-vocabulary
single-process maths: values and gradients to 1e-6 relative in float32; the CRINGE draw is the
same token on every rank and every TP size."""

import pytest
import torch

from nemo_craft.parallel.vocab_parallel import counter_uniforms, vocab_parallel_token_stats
from nemo_craft.testing.distributed import run_distributed

B, S, V, CHUNK, K = 2, 24, 1000, 7, 5


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(B, S, V, generator=gen)
    targets = torch.randint(0, V, (B, S), generator=gen)
    targets[0, :4] = logits[0, :4].argmax(-1)  # some targets inside the top-(k+1)
    mask = torch.rand(B, S, generator=gen) > 0.2
    n = int(mask.sum())
    weights = [torch.randn(n, generator=gen) for _ in range(4)]
    uniforms = counter_uniforms(3, 11, torch.arange(B), S)
    return logits, targets, mask, weights, uniforms


def _stats(logits, targets, mask, weights, uniforms, tp_group=None):
    leaf = logits.clone().requires_grad_(True)
    st = vocab_parallel_token_stats(
        leaf, targets, mask, tp_group=tp_group, chunk_size=CHUNK, cringe_uniforms_BS=uniforms, cringe_k=K
    )
    outs = (st.logp, st.entropy, st.z_target, st.z_positive)
    sum(w @ o for w, o in zip(weights, outs)).backward()
    return {
        "logp": st.logp.detach(),
        "entropy": st.entropy.detach(),
        "z_target": st.z_target.detach(),
        "z_positive": st.z_positive.detach(),
        "positive_ids": st.positive_ids,
        "grad": leaf.grad,
    }


def tp_body():
    """On each TP rank: its vocabulary shard of the same logits."""
    from megatron.core import parallel_state as ps

    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    logits, targets, mask, weights, uniforms = _inputs()
    shard = V // tp
    local = logits[..., rank * shard : (rank + 1) * shard].contiguous()
    out = _stats(local, targets, mask, weights, uniforms, tp_group=ps.get_tensor_model_parallel_group())
    out["rank"] = rank
    return out


def _reference():
    """float64 full-vocabulary autograd, and the library in one process (tp_group=None)."""
    logits, targets, mask, weights, uniforms = _inputs()
    single = _stats(logits, targets, mask, weights, uniforms)
    leaf = logits.double().requires_grad_(True)
    logsm = torch.log_softmax(leaf, -1)
    logp = logsm.gather(-1, targets[..., None])[..., 0][mask]
    ent = -(logsm.exp() * logsm).sum(-1)[mask]
    flat = leaf[mask]
    rows = torch.arange(flat.shape[0])
    z_t, z_s = flat[rows, targets[mask]], flat[rows, single["positive_ids"]]
    sum(w.double() @ o for w, o in zip(weights, (logp, ent, z_t, z_s))).backward()
    exact = {"logp": logp.detach(), "entropy": ent.detach(), "grad": leaf.grad}
    return single, exact, logits, targets, mask


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_vocab_parallel_matches_full_vocab(tp):
    single, exact, logits, targets, mask = _reference()
    from tests.unit.losses._reference import ref_cringe_positive

    expected_pos = ref_cringe_positive(logits, targets, counter_uniforms(3, 11, torch.arange(B), S), K)[mask]
    assert torch.equal(single["positive_ids"], expected_pos)

    if tp == 1:  # TP 1 is the single-process path (tp_group=None): no ranks to spawn
        outs = [dict(single, rank=0)]
    else:
        outs = run_distributed(tp_body, world_size=tp, tp=tp, timeout=120)
    grad = torch.cat([o["grad"] for o in sorted(outs, key=lambda o: o["rank"])], dim=-1)
    for o in outs:  # every rank returns the same per-token values and draws the same token
        for key in ("logp", "entropy", "z_target", "z_positive", "positive_ids"):
            assert torch.equal(o[key], outs[0][key]), key
    got = outs[0]
    assert torch.equal(got["positive_ids"], single["positive_ids"])
    assert torch.equal(got["z_target"], single["z_target"]) and torch.equal(got["z_positive"], single["z_positive"])
    for key in ("logp", "entropy"):  # float32 vs single process, and vs float64 truth
        torch.testing.assert_close(got[key], single[key], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got[key].double(), exact[key], rtol=1e-6, atol=2e-6)
    scale = float(exact["grad"].abs().max())
    torch.testing.assert_close(grad, single["grad"], rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(grad.double(), exact["grad"], rtol=1e-6, atol=1e-6 * scale)
    assert not grad[~mask].any()


REAL = 937  # V = 1000 columns, the last 63 padding (at TP 4 they span one shard; REAL_SPAN two)
REAL_SPAN = 700


def _padded_stats(real, tp_group=None, shard=None):
    """Stats of the padded logits with vocab_size=real (padding columns hold large logits, so a
    softmax that let them in would be far off), on one TP shard when ``shard`` is given."""
    logits, targets, mask, weights, uniforms = _inputs()
    logits[..., real:] = 8.0 + logits[..., real:].abs()
    targets = targets % real
    local = logits if shard is None else logits[..., shard].contiguous()
    leaf = local.clone().requires_grad_(True)
    st = vocab_parallel_token_stats(
        leaf,
        targets,
        mask,
        tp_group=tp_group,
        chunk_size=CHUNK,
        cringe_uniforms_BS=uniforms,
        cringe_k=K,
        vocab_size=real,
    )
    sum(w @ o for w, o in zip(weights, (st.logp, st.entropy, st.z_target, st.z_positive))).backward()
    return {
        "logp": st.logp.detach(),
        "entropy": st.entropy.detach(),
        "positive_ids": st.positive_ids,
        "grad": leaf.grad,
    }


def padded_tp_body(real):
    from megatron.core import parallel_state as ps

    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    shard = slice(rank * (V // tp), (rank + 1) * (V // tp))
    return dict(_padded_stats(real, ps.get_tensor_model_parallel_group(), shard), rank=rank)


@pytest.mark.parametrize("tp, real", [(1, REAL), (2, REAL), (4, REAL), (4, REAL_SPAN)])
def test_padding_columns_take_no_part(tp, real):
    """With vocab_size, the padded logits give the statistics of the real columns alone (the
    Hugging Face model's softmax), no gradient reaches the padding, and CRINGE never draws it."""
    _, targets, mask, weights, uniforms = _inputs()
    logits = _inputs()[0][..., :real]
    leaf = logits.double().requires_grad_(True)
    logsm = torch.log_softmax(leaf, -1)
    t = targets % real
    logp, ent = logsm.gather(-1, t[..., None])[..., 0][mask], -(logsm.exp() * logsm).sum(-1)[mask]
    outs = (
        [dict(_padded_stats(real), rank=0)]
        if tp == 1
        else run_distributed(padded_tp_body, world_size=tp, tp=tp, timeout=120, args=(real,))
    )
    got = outs[0]
    torch.testing.assert_close(got["logp"].double(), logp.detach(), rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(got["entropy"].double(), ent.detach(), rtol=1e-6, atol=2e-6)
    grad = torch.cat([o["grad"] for o in sorted(outs, key=lambda o: o["rank"])], dim=-1)
    assert not grad[..., real:].any()
    assert int(got["positive_ids"].max()) < real


def test_vocab_size_out_of_range_is_refused():
    logits, targets, mask, _, _ = _inputs()
    with pytest.raises(ValueError, match="vocab_size=1001"):
        vocab_parallel_token_stats(logits, targets, mask, vocab_size=V + 1)
    with pytest.raises(ValueError, match=r"targets must be vocabulary ids in \[0, 10\)"):
        vocab_parallel_token_stats(logits, targets, mask, vocab_size=10)
