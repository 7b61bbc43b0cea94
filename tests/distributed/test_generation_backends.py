"""Backend choice with a real megatron model on this machine's layout, and megatron's dynamic
context (the paged KV cache) built on CPU from the dynamic backend's settings: its block count,
request and token limits are the ones the backend's own checks assume, releasing it frees the
cache (on every supported megatron-core: from 0.17 megatron's own release frees nothing unless
the context was built to recompute), and building it again allocates a new one. Running the
dynamic engine needs a GPU (tests/gpu/test_dynamic_backend.py).

The rank bodies are the module-level functions without ``test_``."""

from __future__ import annotations

import pytest
import torch

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.testing.distributed import run_distributed


def _tiny(params_dtype="fp32"):
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.distributed import current_layout
    from nemo_craft.testing.models import tiny_model_config

    layout = current_layout()
    cfg = tiny_model_config(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        kv_channels=16,
        vocab_size=CharTokenizer().vocab_size,
        make_vocab_size_divisible_by=128,
        tie_word_embeddings=False,
        max_position_embeddings=512,
        params_dtype=params_dtype,
    )
    return build_model(cfg, ParallelConfig(tensor_model_parallel_size=layout.tp))


def chosen_backends():
    """The backend ``auto`` builds here and the error of ``dynamic``."""
    from nemo_craft.rollout import GenerationConfig, Generator

    chunks, tok = _tiny(), CharTokenizer()
    auto = Generator(chunks, tok, GenerationConfig(backend="auto"))
    out = dict(
        auto=type(auto._backend).__name__,
        tokens=auto.generate([tok.encode("hi")], max_new_tokens=3, config=auto.with_config(temperature=0.0))[
            0
        ].token_ids,
    )
    try:
        Generator(chunks, tok, GenerationConfig(backend="dynamic"))
    except ValueError as err:
        out["dynamic_error"] = str(err)
    return out


def _tensors_on(data_ptr: int) -> int:
    """Live tensors whose storage starts at ``data_ptr`` (another view would keep it allocated)."""
    import gc

    count = 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.untyped_storage().data_ptr() == data_ptr:
                count += 1
        except Exception:  # noqa: BLE001 - tensors without storage (meta, sparse) hold nothing
            pass
    return count


def dynamic_context(kv_cache_gb):
    """megatron's dynamic context for the tiny bf16 model, against the backend's sizing; then
    released as the backend does after each call (the KV cache freed: no tensor is left on its
    storage), and built again (allocated anew)."""
    import gc
    import weakref
    from types import SimpleNamespace

    from megatron.core import parallel_state as ps

    from nemo_craft.parallel.mcore_compat import kv_block_allocator, last_token_logits_only
    from nemo_craft.rollout.dynamic_backend import kv_block_bytes, kv_cache_blocks
    from nemo_craft.rollout.dynamic_engine_adapter import EngineSpec, build_context, release_kv_cache

    chunks = _tiny("bf16")
    tp = ps.get_tensor_model_parallel_world_size()
    spec = EngineSpec(
        max_sequence_length=512,
        kv_cache_gb=kv_cache_gb,
        max_requests=8,
        max_tokens=1024,
        cuda_graphs=False,
        pp_microbatch_tokens=None,
        padded_vocab_size=chunks[0].vocab_size,
        layers_on_stage=2,
    )
    context = build_context(chunks[0], spec)
    ours = kv_cache_blocks(kv_cache_gb, kv_block_bytes(layers=2, kv_heads=2 // tp, head_dim=16, dtype_bytes=2))
    out = dict(
        megatron_usable=kv_block_allocator(context).total_count - 1,
        ours=ours,
        block_tokens=context.block_size_tokens,
        limits=(context.max_requests, context.max_tokens, context.max_sequence_length),
        last_token_only=last_token_logits_only(context),
        dtype=str(context.params_dtype),
        kv_shape=tuple(context.memory_buffer.shape),
    )
    kv_storage = context.memory_buffer.untyped_storage().data_ptr()
    kv_ref = weakref.ref(context.memory_buffer)
    release_kv_cache(SimpleNamespace(context=context))  # what the backend does after each call
    gc.collect()
    out["released"] = not hasattr(context, "memory_buffer") and kv_ref() is None and _tensors_on(kv_storage) == 0
    again = build_context(chunks[0], spec)
    out["reallocated"] = tuple(again.memory_buffer.shape) == out["kv_shape"]
    release_kv_cache(SimpleNamespace(context=again))
    # megatron-core 0.17+ pins host buffers of the context; the CPU mode leaves them pageable
    out["pinning_is_harmless"] = (
        not torch.empty(2, pin_memory=True).is_pinned() and torch.zeros(2).pin_memory().device.type == "cpu"
    )
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without a GPU")
def test_auto_builds_the_static_backend_here_and_dynamic_says_what_is_missing():
    out = run_distributed(chosen_backends, world_size=1)[0]
    assert out["auto"] == "StaticBackend" and len(out["tokens"]) == 3
    for needed in ("no CUDA GPU", "flash-attn >= 2.7.3", "float32", "rollout.generation.backend=static"):
        assert needed in out["dynamic_error"]


@pytest.mark.parametrize("tp", [1, 2])
def test_megatrons_paged_kv_cache_has_the_blocks_the_backend_counts(tp):
    ranks = run_distributed(dynamic_context, world_size=tp, tp=tp, args=(0.01,))
    for out in ranks:
        assert out["megatron_usable"] == out["ours"] > 1
        assert out["block_tokens"] == 256 and out["limits"] == (8, 1024, 512)
        assert out["last_token_only"] and out["dtype"] == "torch.bfloat16"
        # [K/V, layers, blocks, block tokens, KV heads of this rank, head dim]
        assert out["kv_shape"] == (2, 2, out["ours"] + 1, 256, 2 // tp, 16)
        assert out["released"], "the KV cache is still allocated after release_kv_cache"
        assert out["reallocated"] and out["pinning_is_harmless"]
