"""The one place that touches megatron-core's dynamic inference API (``DynamicBackend`` uses it).

megatron-core has built the dynamic engine two ways; this adapter picks by what the installed
version's signatures accept, not by version number:

==============================  ==========================================  ===========================================
piece                           0.16.1 (keyword arguments)                   later (``megatron.core.inference.config``)
==============================  ==========================================  ===========================================
``DynamicInferenceContext``     ``(params_dtype=, num_layers=, ...,          ``(model_config, InferenceConfig(...))``
                                buffer_size_gb=, max_requests=, ...)``
``GPTInferenceWrapper``         ``(model, InferenceWrapperConfig, context)``  ``(model, context)``
``DynamicInferenceEngine``      ``(controller, context, random_seed=,         ``(controller, context)``; chunked prefill
                                enable_chunked_prefill=)``                    is an ``InferenceConfig`` field
sampling hook                   ``_dynamic_step_sample_logits(logits)``       ``_dynamic_step_sample_logits()``, logits
                                                                             in ``controller._all_logits_cuda``
==============================  ==========================================  ===========================================

Used from both: ``TextGenerationController(wrapper, tokenizer)``, ``engine.add_request(id, token
ids, SamplingParams)``, ``engine.has_unfinished_requests()``, ``engine.step_modern()`` (or
``step()`` where that is the no-argument step), ``controller.set_stop_word_finished_ids_callback``
(megatron calls it once per step, after sampling, with the active request ids in the order of the
sampled tokens; the ids it returns finish at that step, their token kept), and the context's
``total_request_count`` / ``paused_request_count`` / ``chunked_prefill_request_id`` /
``deallocate_all_tensors()``.

The controller subclass replaces megatron's sampler (see ``DynamicBackend`` for why) and nothing
else. Only the keyword-argument path has been read against installed code (0.16.1), and only its
context has been built (on CPU; the controller and engine need CUDA); the other follows Megatron-LM's newer constructors
as published on its main branch and has not run. Megatron-LM's main branch has since split the
engine into ``engines/dynamic/`` with asynchronous scheduling; whether the stop callback still
runs in the step that sampled is unverified there, and ``tests/gpu/test_dynamic_backend.py``
is the check to run after an upgrade.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

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
    pp_microbatch_tokens: int
    padded_vocab_size: int
    layers_on_stage: int


def build_engine(model: torch.nn.Module, spec: EngineSpec):
    """Context, wrapper, controller (our sampler hook) and engine for ``model`` (this rank's chunk)."""
    from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import (
        GPTInferenceWrapper,
    )
    from megatron.core.utils import get_model_config

    context = build_context(model, spec)
    if "inference_wrapper_config" in inspect.signature(GPTInferenceWrapper).parameters:
        wrapper = GPTInferenceWrapper(model, _wrapper_config(get_model_config(model), spec), context)
    else:
        wrapper = GPTInferenceWrapper(model, context)
    if hasattr(wrapper, "prep_model_for_inference"):
        wrapper.prep_model_for_inference()  # eval mode, pipeline flags
    controller = controller_class()(wrapper, _NoTextTokenizer(spec.padded_vocab_size))
    engine_params = inspect.signature(DynamicInferenceEngine).parameters
    extra = {}
    if "random_seed" in engine_params:  # 0.16 asserts an int; nothing reads it (our sampler has its own stream)
        extra["random_seed"] = 0
    if "enable_chunked_prefill" in engine_params:
        extra["enable_chunked_prefill"] = False
    return DynamicInferenceEngine(controller, context, **extra)


def build_context(model: torch.nn.Module, spec: EngineSpec):
    """megatron's ``DynamicInferenceContext`` (the paged KV cache, allocated here) for ``model``."""
    from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext
    from megatron.core.utils import get_model_config

    config = get_model_config(model)
    if "inference_config" in inspect.signature(DynamicInferenceContext).parameters:
        return DynamicInferenceContext(config, _inference_config(config, spec))
    return DynamicInferenceContext(**_context_kwargs(config, spec))


def run_requests(engine, ids: Sequence[int], prompts: Sequence[Sequence[int]], budgets: Sequence[int], *,
                 sample: Callable[[torch.Tensor | None, int], torch.Tensor],
                 finished: Callable[[list[int]], set[int]]) -> None:
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
            engine.add_request(request_id, list(prompt),
                               SamplingParams(num_tokens_to_generate=int(budget), termination_id=-1))
        step = getattr(engine, "step_modern", None) or engine.step
        # Each step that runs a request gives at least one row a token, so more steps than tokens
        # means requests wait for blocks that never come: fail rather than spin.
        for _ in range(sum(int(b) for b in budgets) + len(ids)):
            if not engine.has_unfinished_requests():
                break
            step()
        else:
            if engine.has_unfinished_requests():
                raise RuntimeError("megatron's dynamic engine stopped making progress (requests wait for KV blocks "
                                   "or token budget that never frees); raise rollout.kv_cache_gb or "
                                   "max_tokens_per_step")
    finally:
        controller.nemo_craft_sample = None


def release_kv_cache(engine) -> None:
    """Free the engine's KV cache and request tensors now: the engine object itself can outlive the
    call (asyncio's loop keeps its pending notification tasks until the loop next runs), and
    gigabytes of cache must not stay allocated through training."""
    deallocate = getattr(engine.context, "deallocate_all_tensors", None)
    if deallocate is not None:
        deallocate()


def _finish_hook(context, finished, active_ids):
    chunked = getattr(context, "chunked_prefill_request_id", -1)
    assert chunked == -1, "chunked prefill is off: no active request may be mid-prompt"
    return finished(list(active_ids))


# -- construction of the two API generations --------------------------------------------------------


def _context_kwargs(config, spec: EngineSpec) -> dict:
    return dict(
        params_dtype=config.params_dtype,
        num_layers=spec.layers_on_stage,
        kv_channels=config.kv_channels,
        num_attention_heads=config.num_query_groups or config.num_attention_heads,
        max_sequence_length=spec.max_sequence_length,
        buffer_size_gb=spec.kv_cache_gb,
        max_requests=spec.max_requests,
        max_tokens=spec.max_tokens,
        block_size_tokens=KV_BLOCK_TOKENS,
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        num_cuda_graphs=CUDA_GRAPH_COUNT if spec.cuda_graphs else None,
        materialize_only_last_token_logits=True,
        use_cuda_graphs_for_non_decode_steps=False,
        unified_memory_level=0,
    )


def _inference_config(config, spec: EngineSpec):
    from megatron.core.inference.config import InferenceConfig

    if spec.layers_on_stage != config.num_layers // config.pipeline_model_parallel_size:
        raise ValueError(
            f"this pipeline stage has {spec.layers_on_stage} layers, not num_layers / PP = "
            f"{config.num_layers // config.pipeline_model_parallel_size}: this megatron-core's dynamic "
            "context sizes the KV cache for an even split; use rollout.backend=static")
    wanted = dict(block_size_tokens=KV_BLOCK_TOKENS, buffer_size_gb=spec.kv_cache_gb,
                  max_requests=spec.max_requests, max_tokens=spec.max_tokens,
                  max_sequence_length=spec.max_sequence_length, materialize_only_last_token_logits=True,
                  num_cuda_graphs=CUDA_GRAPH_COUNT if spec.cuda_graphs else None,
                  use_cuda_graphs_for_non_decode_steps=False, enable_chunked_prefill=False,
                  unified_memory_level=0)
    fields = {f.name for f in dataclasses.fields(InferenceConfig)}
    missing = sorted(set(wanted) - fields)
    if missing:
        raise RuntimeError(f"this megatron-core's InferenceConfig has no {missing}; the dynamic backend "
                           "knows megatron-core 0.16's and the InferenceConfig API; use rollout.backend=static")
    return InferenceConfig(**wanted)


def _wrapper_config(config, spec: EngineSpec):
    from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import (
        InferenceWrapperConfig,
    )

    return InferenceWrapperConfig(
        hidden_size=config.hidden_size,
        params_dtype=config.params_dtype,
        inference_batch_times_seqlen_threshold=spec.pp_microbatch_tokens,
        padded_vocab_size=spec.padded_vocab_size,
        inference_max_requests=spec.max_requests,
        inference_max_seq_length=spec.max_sequence_length,
        fp32_residual_connection=config.fp32_residual_connection,
    )


class _NoTextTokenizer:
    """megatron's engine detokenizes every finished request (prompt and generation) for its own
    records; this backend returns token ids and the Generator decodes only what it keeps, so the
    engine's text is never read and decoding whole conversations each turn would be wasted."""

    eod = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def detokenize(self, tokens, *args, **kwargs) -> str:
        return ""


@functools.lru_cache(maxsize=None)
def controller_class():
    """megatron's ``TextGenerationController`` with its dynamic-batching sampler replaced."""
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    class NemoCraftController(TextGenerationController):
        nemo_craft_sample = None

        def _dynamic_step_sample_bookkeeping(self, *args, **kwargs):
            """megatron groups rows by their sampling settings for its own sampler; unused."""

        def _dynamic_step_sample_logits(self, logits=None):
            if logits is None:  # newer megatron keeps them on the controller
                logits = getattr(self, "_all_logits_cuda", None)
            context = self.inference_wrapped_model.inference_context
            n = context.total_request_count - context.paused_request_count
            logits_NV = None if logits is None else logits.reshape(-1, logits.shape[-1])[:n]
            self._sampled_tokens_cuda[:n] = self.nemo_craft_sample(logits_NV, n)

    return NemoCraftController
