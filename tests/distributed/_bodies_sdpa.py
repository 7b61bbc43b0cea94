"""Rank bodies of test_sdpa.py: megatron's DotProductAttention and SDPAttention side by side,
built by megatron under the harness's real process groups (tensor parallel included)."""

from __future__ import annotations

import torch


def _pair(num_heads, num_groups, head_dim, attention_dropout=0.0):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_craft.models.sdpa import SDPAttention
    from nemo_craft.testing.distributed import current_layout

    config = TransformerConfig(
        num_layers=1,
        hidden_size=num_heads * head_dim,
        num_attention_heads=num_heads,
        num_query_groups=num_groups,
        kv_channels=head_dim,
        tensor_model_parallel_size=current_layout().tp,
        attention_dropout=attention_dropout,
        use_cpu_initialization=True,
    )
    args = (config, 1, AttnMaskType.causal, "self")
    return DotProductAttention(*args), SDPAttention(*args)


def _device():
    from nemo_craft.parallel.cpu_mode import compute_device

    return compute_device()


def _qkv(sq, sk, b, heads, groups, hn, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, b, heads, hn, generator=gen)
    k = torch.randn(sk, b, groups, hn, generator=gen)
    v = torch.randn(sk, b, groups, hn, generator=gen)
    return q.to(_device()), k.to(_device()), v.to(_device())


def _run(module, q, k, v, mask):
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = module(q, k, v, mask)
    grad_out = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in (q, k, v)]


def compare_with_megatron(num_heads, num_groups, head_dim):
    """Max |SDPA - megatron| of output and input gradients per case, and SDPA's finiteness,
    with this rank's heads (num_heads / TP, num_groups / TP)."""
    from nemo_craft.testing.distributed import current_layout

    tp = current_layout().tp
    heads, groups = num_heads // tp, num_groups // tp
    local, sdpa = _pair(num_heads, num_groups, head_dim)
    b, s = 3, 11
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None]
    cases = {
        # training forward: no mask, the causal type builds one
        "causal": (s, s, None),
        # a context window of the static KV cache: 4 new queries against 11 keys
        "window": (4, s, causal[..., s - 4 :, :]),
        # a decode step: one query, every cached key, no mask
        "decode": (1, s, None),
        # a per-row padding mask on top of causal ([b, 1, sq, sk])
        "padded": (s, s, causal | (torch.arange(s) >= torch.tensor([s, 7, 5])[:, None])[:, None, None, :]),
    }
    out = {}
    for i, (name, (sq, sk, mask)) in enumerate(cases.items()):
        q, k, v = _qkv(sq, sk, b, heads, groups, head_dim, seed=100 + i)
        mask = None if mask is None else mask.to(_device())
        ref, ref_grads = _run(local, q, k, v, mask)
        got, got_grads = _run(sdpa, q, k, v, mask)
        if name == "padded":  # rows past each sample's length attend to nothing but padding
            keep = ~mask[:, 0].all(-1)  # [b, sq]: rows with something to attend to
            ref, got = (t.view(sq, b, -1)[keep.T.to(t.device)] for t in (ref, got))
            ref_grads, got_grads = ref_grads[:1], got_grads[:1]
        out[name] = dict(
            shape=tuple(got.shape),
            out=float((got - ref).abs().max()),
            grad=max(float((g - r).abs().max()) for g, r in zip(got_grads, ref_grads)),
            finite=bool(torch.isfinite(got).all()),
        )
    return out


def _plain_attention(q, k, v, scale):
    """softmax(q k^T * scale + causal -inf) v in float64, grouped heads repeated:
    [s, b, heads, hn] and [s, b, groups, hn] -> [s, b, heads * hn]."""
    reps = q.size(2) // k.size(2)
    q, k, v = (x.double().permute(1, 2, 0, 3) for x in (q, k.repeat_interleave(reps, 2), v.repeat_interleave(reps, 2)))
    scores = q @ k.transpose(-1, -2) * scale
    s = scores.size(-1)
    scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool, device=scores.device), 1), -torch.inf)
    out = torch.softmax(scores, -1) @ v
    return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)


def dropout_draws_from_the_model_parallel_rng():
    """SDPAttention with dropout: eval is deterministic and equals dropout-free attention (a
    float64 softmax loop); training draws a mask from megatron's tracker (same seed, same
    output; differs from eval). Negative control: an attention that keeps dropout in eval (the
    kernel handed ``dropout_p`` whatever the mode) must fail the eval check."""
    from unittest import mock

    from megatron.core import tensor_parallel

    from nemo_craft.models import sdpa as sdpa_mod

    _, sdpa = _pair(4, 2, 8, attention_dropout=0.5)
    q, k, v = _qkv(6, 6, 2, 4, 2, 8, seed=7)
    plain = _plain_attention(q, k, v, sdpa.softmax_scale)
    sdpa.eval()
    evaluated = sdpa(q, k, v, None)
    again = sdpa(q, k, v, None)
    real_sdpa = sdpa_mod.F.scaled_dot_product_attention

    def always_dropout(*args, **kwargs):
        return real_sdpa(*args, **{**kwargs, "dropout_p": 0.5})

    tensor_parallel.model_parallel_cuda_manual_seed(123)
    with mock.patch.object(sdpa_mod.F, "scaled_dot_product_attention", always_dropout):
        broken_eval = sdpa(q, k, v, None)
    sdpa.train()
    runs = []
    for _ in range(2):
        tensor_parallel.model_parallel_cuda_manual_seed(123)
        runs.append(sdpa(q, k, v, None))
    return dict(
        device=str(q.device.type),
        eval_deterministic=bool(torch.equal(evaluated, again)),
        eval_error=float((evaluated.double() - plain).abs().max()),
        broken_eval_error=float((broken_eval.double() - plain).abs().max()),
        same_seed_same=bool(torch.equal(runs[0], runs[1])),
        train_differs_from_eval=not torch.allclose(runs[0], evaluated),
    )


def core_attention_of_the_local_spec():
    """The core attention class the local spec gets per ``model.core_attention``, and the
    refusal of a setting SDPAttention does not implement."""
    from nemo_craft.models.provider import layer_spec, make_transformer_config
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.models import tiny_model_config

    out = {}
    for choice in ("sdpa", "local"):
        cfg = tiny_model_config(
            num_query_groups=None, make_vocab_size_divisible_by=128, tie_word_embeddings=False, core_attention=choice
        )
        spec = layer_spec(cfg, make_transformer_config(cfg, ParallelConfig()), use_te=False)
        out[choice] = spec.layer_specs[0].submodules.self_attention.submodules.core_attention.__name__
        windowed = make_transformer_config(cfg, ParallelConfig(), overrides={"window_size": (8, 0)})
        try:
            layer_spec(cfg, windowed, use_te=False)
            out[f"{choice}_windowed"] = "built"
        except ValueError as err:
            out[f"{choice}_windowed"] = str(err)
    return out
