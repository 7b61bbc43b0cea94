"""Choosing the generation backend, and the dynamic backend's CPU-side parts: its capability facts,
KV-cache sizing, per-step row bookkeeping, and the megatron API it hooks. The dynamic engine itself
runs only on a GPU (tests/gpu/test_dynamic_backend.py)."""

import pytest
import torch

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.rollout import StopCriteria
from nemo_craft.rollout.dynamic_backend import (
    DynamicCapability,
    _Rows,
    check_kv_cache,
    kv_block_bytes,
    kv_cache_blocks,
)
from nemo_craft.rollout.generation import resolve_backend

GPU_BF16 = DynamicCapability(cuda=True, flash_attn="2.7.3", flash_attn_3=False, params_dtype=torch.bfloat16)


def _facts(**changes) -> DynamicCapability:
    return DynamicCapability(**{**GPU_BF16.__dict__, **changes})


@pytest.mark.parametrize(
    "facts,runs",
    [
        (GPU_BF16, True),
        (_facts(flash_attn="2.8.3"), True),
        (_facts(flash_attn="2.7.4.post1"), True),
        (_facts(params_dtype=torch.float16), True),
        (_facts(params_dtype=None), True),  # dtype not known yet: decided by the rest
        (_facts(flash_attn=None, flash_attn_3=True), True),  # megatron takes FlashAttention-3 instead
        (_facts(cuda=False), False),
        (_facts(flash_attn=None), False),
        (_facts(flash_attn="2.7.2"), False),
        (_facts(flash_attn="2.6.3"), False),
        (_facts(flash_attn="not-a-version"), False),
        (_facts(params_dtype=torch.float32), False),
    ],
)
def test_auto_takes_dynamic_exactly_when_cuda_flash_attn_and_a_half_precision_model_are_there(facts, runs):
    assert (facts.problem() is None) == runs
    assert resolve_backend("auto", lambda: facts) == ("dynamic" if runs else "static")
    assert resolve_backend("static", lambda: facts) == "static"


def test_dynamic_without_what_it_needs_names_all_of_it_and_the_alternative():
    facts = DynamicCapability(cuda=False, flash_attn="2.6.3", flash_attn_3=False, params_dtype=torch.float32)
    with pytest.raises(ValueError) as err:
        resolve_backend("dynamic", lambda: facts)
    message = str(err.value)
    for needed in ("CUDA", "flash-attn >= 2.7.3", "2.6.3 is installed", "float32", "rollout.generation.backend=static"):
        assert needed in message


def test_static_and_vllm_never_probe_and_unknown_names_are_refused():
    def probe():
        raise AssertionError("only auto and dynamic probe for the dynamic backend")

    assert resolve_backend("static", probe) == "static"
    assert resolve_backend("vllm", probe) == "vllm"
    with pytest.raises(ValueError, match="sglang"):
        resolve_backend("sglang", probe)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_on_this_machine_auto_is_static_and_dynamic_says_why_not():
    facts = DynamicCapability.probe(torch.bfloat16)
    assert not facts.cuda
    assert resolve_backend("auto", lambda: facts) == "static"
    with pytest.raises(ValueError, match="no CUDA GPU.*rollout.generation.backend=static"):
        resolve_backend("dynamic", lambda: facts)


# -- KV cache sizing ------------------------------------------------------------------------------


def test_kv_block_bytes_and_usable_blocks():
    # conf/model/tiny.yaml in bf16 at TP1: 4 layers, 2 KV heads of 32 channels.
    tiny = kv_block_bytes(layers=4, kv_heads=2, head_dim=32, dtype_bytes=2)
    assert tiny == 2 * 2 * 4 * 256 * 2 * 32 == 256 * 1024
    assert kv_cache_blocks(1 / 1024, tiny) == 3  # 1 MiB: 4 blocks, one of them megatron's padding block
    assert kv_cache_blocks(1e-9, tiny) == 1  # megatron never makes fewer than two
    # Qwen2.5-7B at TP2: 28 layers, 4 KV heads -> 2 per rank, 128 channels.
    qwen = kv_block_bytes(layers=28, kv_heads=2, head_dim=128, dtype_bytes=2)
    assert qwen == 7 * 1024**2 and kv_cache_blocks(4.0, qwen) == 4096 // 7 - 1 == 584


def test_kv_cache_must_hold_one_whole_sequence():
    tiny = kv_block_bytes(layers=4, kv_heads=2, head_dim=32, dtype_bytes=2)
    check_kv_cache(1 / 1024, tiny, 512)  # 3 blocks: 2 for the sequence + 1 claimed early
    with pytest.raises(ValueError, match=r"kv_cache_gb=0.0009765625 holds 3 KV blocks.*needs 4.*at least 0.00122"):
        check_kv_cache(1 / 1024, tiny, 513)


# -- the per-step bookkeeping of DynamicBackend ------------------------------------------------------


def test_rows_follow_the_engines_active_order_and_stop_like_the_static_backend():
    tok = CharTokenizer()
    a, b, c = tok.encode("a")[0], tok.encode("b")[0], tok.encode("c")[0]
    stop = StopCriteria(tok.stop_ids, ("cab",), tok.decode)
    rows = _Rows([10, 11, 12], budgets=[5, 2, 4], stop=stop)
    steps = [  # (active request ids in the engine's order, their sampled tokens)
        ([12, 10], [c, a]),  # request 11 still waits for the cache
        ([10, 12, 11], [tok.eos_id, a, b]),  # 10 draws EOS; 11 starts
        ([12, 11], [b, b]),  # 12 completes "cab"; 11 reaches its budget of 2
    ]
    finished = []
    for n, (ids, tokens) in enumerate(steps):
        rows.stage(tokens, [-0.5 - n] * len(tokens))
        finished.append(rows.finish(ids))
    assert finished == [set(), {10}, {11, 12}]
    out = rows.results()
    assert out[0] == ([a, tok.eos_id], [-0.5, -1.5], "eos")
    assert out[1] == ([b, b], [-1.5, -2.5], "length")
    assert out[2] == ([c, a, b], [-0.5, -1.5, -2.5], "stop")


def test_rows_refuse_a_finished_request_and_report_the_ones_megatron_dropped():
    tok = CharTokenizer()
    rows = _Rows([0, 1], budgets=[1, 3], stop=StopCriteria(tok.stop_ids))
    rows.stage([5, 6], [0.0, 0.0])
    assert rows.finish([0, 1]) == {0}
    rows.stage([7, 8], [0.0, 0.0])
    with pytest.raises(AssertionError, match="after it finished"):
        rows.finish([0, 1])
    with pytest.raises(RuntimeError, match=r"without finishing rows \[1\]"):
        rows.results()


# -- the megatron-core API the dynamic backend hooks -------------------------------------------------


def test_the_installed_megatron_has_the_hooks_the_adapter_overrides():
    """When megatron-core is upgraded and one of these moves, this fails here, on the CPU."""
    import inspect

    from megatron.core.inference.sampling_params import SamplingParams
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    from nemo_craft.parallel.mcore_compat import mcore_api
    from nemo_craft.rollout.dynamic_engine_adapter import controller_class

    api = mcore_api()  # raises when a hook of this version is missing
    cls = controller_class()
    assert issubclass(cls, TextGenerationController)
    # our sampler replaces megatron's in the method this version calls
    assert "_dynamic_step_sample_logits" in vars(cls)
    assert ("_dynamic_step_sample_bookkeeping" in vars(cls)) == api.sampler_takes_logits
    # the stop callback is called after sampling, from the bookkeeping of the same step
    assert "_get_stop_word_finished_ids_callback" in inspect.getsource(
        getattr(TextGenerationController, api.stop_callback_caller)
    )
    from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext

    for member in ("chunked_prefill_request_id", "total_request_count", "paused_request_count"):
        assert member in inspect.getsource(DynamicInferenceContext), member
    params = SamplingParams(num_tokens_to_generate=3, termination_id=-1)
    assert (params.num_tokens_to_generate, params.termination_id, params.return_log_probs) == (3, -1, False)
