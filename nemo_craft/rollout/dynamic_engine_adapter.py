"""How ``DynamicBackend`` drives megatron-core's dynamic inference engine: build it for a model
chunk, run a batch of requests through it with our sampler and stop decision, free its KV cache.

Every version difference of megatron-core's API (constructors, the sampler hook, the KV cache
release) is ``nemo_craft.parallel.mcore_compat``'s; this module is the same on every supported
version. What it uses of megatron's: ``engine.add_request(id, token ids, SamplingParams)``,
``engine.has_unfinished_requests()``, ``engine.step_modern()``,
``controller.set_stop_word_finished_ids_callback`` (megatron calls it once per step, after
sampling, with the active request ids in the order of the sampled tokens; the ids it returns
finish at that step, their token kept), and the context's ``total_request_count`` /
``paused_request_count`` / ``chunked_prefill_request_id``.

The controller, engine and asynchronous step need CUDA, so on a machine without a GPU only the
context is built (and released); ``tests/gpu/test_dynamic_backend.py`` runs the engine, and is
the check to run on a GPU after a megatron-core upgrade.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nemo_craft.parallel import mcore_compat

__all__ = ["EngineSpec", "build_context", "build_engine", "controller_class", "release_kv_cache", "run_requests"]

KV_BLOCK_TOKENS = 256
"""Tokens per KV-cache block: megatron's default, and flash-attn 2's paged kernels need a multiple
of 256."""

CUDA_GRAPH_COUNT = 16
"""Decode batch sizes captured when CUDA graphs are on (megatron-LM's default count)."""


@dataclass(frozen=True)
class EngineSpec:
    """What the engine is built for (validated by ``DynamicBackend``)."""

    max_sequence_length: int
    kv_cache_gb: float
    max_requests: int
    max_tokens: int
    cuda_graphs: bool
    pp_microbatch_tokens: int | None
    padded_vocab_size: int
    layers_on_stage: int


def build_engine(model: torch.nn.Module, spec: EngineSpec):
    """Context, wrapper, controller (our sampler hook) and engine for ``model`` (this rank's chunk)."""
    context = build_context(model, spec)
    wrapper = mcore_compat.inference_wrapper(
        model,
        context,
        padded_vocab_size=spec.padded_vocab_size,
        max_batch_size=spec.max_requests,
        max_sequence_length=spec.max_sequence_length,
        pp_microbatch_tokens=spec.pp_microbatch_tokens,
    )
    wrapper.prep_model_for_inference()  # eval mode, pipeline flags
    controller = controller_class()(wrapper, _NoTextTokenizer(spec.padded_vocab_size))
    return mcore_compat.dynamic_engine(controller, context)


def build_context(model: torch.nn.Module, spec: EngineSpec):
    """megatron's ``DynamicInferenceContext`` (the paged KV cache, allocated here) for ``model``."""
    from megatron.core.utils import get_model_config

    settings = dict(
        block_size_tokens=KV_BLOCK_TOKENS,
        buffer_size_gb=spec.kv_cache_gb,
        max_requests=spec.max_requests,
        max_tokens=spec.max_tokens,
        max_sequence_length=spec.max_sequence_length,
        materialize_only_last_token_logits=True,
        num_cuda_graphs=CUDA_GRAPH_COUNT if spec.cuda_graphs else None,
        use_cuda_graphs_for_non_decode_steps=False,
        enable_chunked_prefill=False,
        unified_memory_level=0,
    )
    return mcore_compat.dynamic_context(
        get_model_config(model), layers_on_stage=spec.layers_on_stage, settings=settings
    )


def run_requests(
    engine,
    ids: Sequence[int],
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    *,
    sample: Callable[[torch.Tensor | None, int], torch.Tensor],
    finished: Callable[[list[int]], set[int]],
) -> None:
    """Add one request per prompt (request ids ``ids``, unused by the engine so far) and step the
    engine until none is left.

    ``sample(logits_NV, N)`` gives the N active requests' next tokens (logits_NV: [N, V'] where
    this rank has the logits, else None); ``finished(active_ids)`` (same order) says which end
    now. Both run on every rank at every step, in lockstep."""
    from megatron.core.inference.sampling_params import SamplingParams

    controller, context = engine.controller, engine.context
    controller.nemo_craft_sample = sample
    # After the engine's own (set in its __init__): the engine's stop-word bookkeeping is unused.
    controller.set_stop_word_finished_ids_callback(functools.partial(_finish_hook, context, finished))
    try:
        for request_id, prompt, budget in zip(ids, prompts, budgets):
            # termination_id=-1: megatron stops only at the budget; every other end is `finished`'s.
            engine.add_request(
                request_id, list(prompt), SamplingParams(num_tokens_to_generate=int(budget), termination_id=-1)
            )
        # Each step that runs a request gives at least one row a token, so more steps than tokens
        # means requests wait for blocks that never come: fail rather than spin.
        for _ in range(sum(int(b) for b in budgets) + len(ids)):
            if not engine.has_unfinished_requests():
                break
            engine.step_modern()
        else:
            if engine.has_unfinished_requests():
                raise RuntimeError(
                    "megatron's dynamic engine stopped making progress (requests wait for KV blocks "
                    "or token budget that never frees); raise rollout.generation.kv_cache_gb or "
                    "max_tokens_per_step"
                )
    finally:
        controller.nemo_craft_sample = None


def release_kv_cache(engine) -> None:
    """Free the engine's KV cache and request tensors now: the engine object itself can outlive the
    call (asyncio's loop keeps its pending notification tasks until the loop next runs), and
    gigabytes of cache must not stay allocated through training."""
    mcore_compat.release_dynamic_context(engine.context)


def _finish_hook(context, finished, active_ids):
    assert context.chunked_prefill_request_id == -1, "chunked prefill is off: no active request may be mid-prompt"
    return finished(list(active_ids))


class _NoTextTokenizer:
    """megatron's engine detokenizes every finished request (prompt and generation) for its own
    records; this backend returns token ids and the Generator decodes only what it keeps, so the
    engine's text is never read and decoding whole conversations each turn would be wasted."""

    eod = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def detokenize(self, tokens, *args, **kwargs) -> str:
        return ""


def controller_class():
    """megatron's ``TextGenerationController`` with its dynamic-batching sampler replaced by
    ``controller.nemo_craft_sample`` (``mcore_compat.sampling_controller_class``)."""
    return mcore_compat.sampling_controller_class()
