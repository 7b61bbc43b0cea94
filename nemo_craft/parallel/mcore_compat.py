"""The megatron-core versions nemo_craft runs on, and the one place where their APIs differ.

Supported: 0.16.1 up to, not including, 0.20 (``SUPPORTED``; setup.cfg says the same, and
``tests/unit/parallel/test_mcore_compat.py`` keeps the two equal). Any other version is refused
at start-up (``require_supported``, called by ``initialize_parallel`` and the CLI) with one line
that names it. Within the range, every difference that nemo_craft meets is one row of
``McoreApi``, set from the version number; ``require_supported`` also checks that the installed
megatron-core has each class, method and signature its row relies on, so a release that moved
one is an error at start-up naming the version, not a hook that silently never runs.

================================  ==============================  =================================
what                              0.16.1                          0.17, 0.18, 0.19
================================  ==============================  =================================
``GPTInferenceWrapper``           ``(model, InferenceWrapper-     ``(model, context)``; reads the
                                  Config, context)``              model's own TransformerConfig
PP micro-batched prefill          ``inference_batch_times_        removed (``pp_microbatch_tokens``
                                  seqlen_threshold``              is refused there)
``DynamicInferenceContext``       keyword arguments               ``(model_config, InferenceConfig)``
``DynamicInferenceEngine``        ``(controller, context,         ``(controller, context)``
                                  random_seed=, enable_chunked_
                                  prefill=)``
KV cache release                  ``deallocate_all_tensors()``    ``deallocate_inference_state_
                                                                  buffers()``, which frees only
                                                                  under ``kv_cache_management_mode=
                                                                  RECOMPUTE`` (built so here; the
                                                                  default PERSIST frees nothing)
KV block allocator                ``context.block_allocator``     ``context.kv_block_allocator``
last-token-only logits flag       ``context.materialize_only_     ``context.config.materialize_
                                  last_token_logits``             only_last_token_logits``
CPU buffers                       pageable                        pinned (the CPU mode unpins them)
================================  ==============================  =================================

The dynamic engine's sampler hook of ``TextGenerationController``, by version:

=======  =============================================  ==========================  ====================
version  sampler                                        sampled tokens              stop callback run by
=======  =============================================  ==========================  ====================
0.16.1   ``_dynamic_step_sample_bookkeeping()`` then    written into the            ``_dynamic_step_
0.17     ``_dynamic_step_sample_logits(logits)``        ``_sampled_tokens_cuda``    context_bookkeeping``
                                                        buffer
0.18     ``_dynamic_step_sample_logits()``, logits in   ``_sampled_tokens_cuda``    ``_dynamic_step_
         ``_all_logits_cuda``                           rebound each step           context_bookkeeping``
0.19     as 0.18                                        written into the buffer     ``_apply_stop_word_
                                                                                    finished_ids``
=======  =============================================  ==========================  ====================

0.16.1 and 0.19 run in CI (Python 3.11 and 3.12); 0.17 and 0.18 were checked by the targeted
tests listed in docs/compatibility.md. The dynamic engine itself needs a GPU
(``tests/gpu/test_dynamic_backend.py``); on the CPU its context is built and released.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "SUPPORTED",
    "McoreApi",
    "UnsupportedMegatronError",
    "api_for",
    "dynamic_context",
    "dynamic_engine",
    "inference_wrapper",
    "installed_version",
    "kv_block_allocator",
    "last_token_logits_only",
    "mcore_api",
    "pp_microbatch_threshold",
    "release_dynamic_context",
    "require_supported",
    "sampling_controller_class",
]

_LOWEST = (0, 16, 1)
_BEYOND = (0, 20)

SUPPORTED = f">={'.'.join(map(str, _LOWEST))},<{'.'.join(map(str, _BEYOND))}"
"""The megatron-core versions nemo_craft runs on, ">=0.16.1,<0.20" (setup.cfg's requirement)."""

PP_MICROBATCH_TOKENS_DEFAULT = 512
"""megatron-core 0.16's PP prefill micro-batching threshold when ``pp_microbatch_tokens`` is None."""


class UnsupportedMegatronError(RuntimeError):
    """The installed megatron-core is outside ``SUPPORTED``, or lacks what its version should have."""


@dataclass(frozen=True)
class McoreApi:
    """What differs between the supported megatron-core versions (see the module's tables)."""

    version: str
    inference_config: bool
    """0.17+: wrappers, contexts and engines are configured by ``megatron.core.inference.config``."""
    pp_microbatched_prefill: bool
    """0.16: a PP prefill over more tokens than a threshold runs as micro-batches."""
    sampler_takes_logits: bool
    """0.16, 0.17: ``_dynamic_step_sample_logits(logits)`` after ``_dynamic_step_sample_bookkeeping()``;
    0.18+: ``_dynamic_step_sample_logits()`` reading ``_all_logits_cuda``."""
    sampler_rebinds_tokens: bool
    """0.18: the sampler rebinds ``_sampled_tokens_cuda`` (None until then); elsewhere it writes into it."""
    stop_callback_caller: str
    """The controller method that runs the stop-word callback each step."""

    @property
    def kv_release_method(self) -> str:
        return "deallocate_inference_state_buffers" if self.inference_config else "deallocate_all_tensors"

    @property
    def block_allocator_attribute(self) -> str:
        return "kv_block_allocator" if self.inference_config else "block_allocator"


# -- the version ------------------------------------------------------------------------------------


def installed_version() -> str:
    import megatron.core

    return str(megatron.core.__version__)


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of ``version``; a pre-release or local build counts as its release
    (NeMo containers install megatron-core from source as e.g. 0.17.0rc0+abc123)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release
    except InvalidVersion:
        raise UnsupportedMegatronError(
            f"megatron-core reports the version {version!r}, which is not a version number; nemo_craft "
            f"supports megatron-core{SUPPORTED}: install one (pip install 'megatron-core{SUPPORTED}')"
        ) from None


def api_for(version: str) -> McoreApi:
    """The API row of ``version``; UnsupportedMegatronError (one line) outside ``SUPPORTED``."""
    release = _release(version)
    if not _LOWEST <= release[:3] or release[:2] >= _BEYOND:
        raise UnsupportedMegatronError(
            f"megatron-core {version} is not supported: nemo_craft runs on megatron-core{SUPPORTED}; "
            f"install one (pip install 'megatron-core{SUPPORTED}'; 0.17 and later need Python >= 3.12)"
        )
    minor = release[1]
    return McoreApi(
        version=version,
        inference_config=minor >= 17,
        pp_microbatched_prefill=minor == 16,
        sampler_takes_logits=minor <= 17,
        sampler_rebinds_tokens=minor == 18,
        stop_callback_caller="_apply_stop_word_finished_ids" if minor >= 19 else "_dynamic_step_context_bookkeeping",
    )


@functools.lru_cache(maxsize=1)
def mcore_api() -> McoreApi:
    """The installed megatron-core's row, checked against its classes once per process."""
    api = api_for(installed_version())
    problems = missing_pieces(api, _installed_classes(api))
    if problems:
        raise UnsupportedMegatronError(
            f"megatron-core {api.version} lacks what nemo_craft expects of that version: {'; '.join(problems)}. "
            f"Install a released megatron-core{SUPPORTED}, or teach nemo_craft/parallel/mcore_compat.py this build"
        )
    return api


def require_supported() -> McoreApi:
    """Refuse an unsupported megatron-core at start-up (see ``mcore_api``)."""
    return mcore_api()


# -- the check of the installed classes --------------------------------------------------------------


@dataclass(frozen=True)
class _Classes:
    controller: type
    context: type
    engine: type
    wrapper: type


def _installed_classes(api: McoreApi) -> _Classes:
    from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext
    from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    return _Classes(TextGenerationController, DynamicInferenceContext, DynamicInferenceEngine, GPTInferenceWrapper)


def missing_pieces(api: McoreApi, classes: _Classes) -> list[str]:
    """What ``api``'s row relies on and ``classes`` lack: one phrase per missing piece."""
    controller_hooks = [
        "set_stop_word_finished_ids_callback",
        "_init_dynamic_sampling_tensors",
        "_dynamic_step_sample_logits",
        api.stop_callback_caller,
    ]
    if api.sampler_takes_logits:
        controller_hooks.append("_dynamic_step_sample_bookkeeping")
    wanted = [
        ("TextGenerationController", classes.controller, controller_hooks),
        ("DynamicInferenceEngine", classes.engine, ["add_request", "has_unfinished_requests", "step_modern"]),
        ("DynamicInferenceContext", classes.context, [api.kv_release_method]),
        (
            "GPTInferenceWrapper",
            classes.wrapper,
            [
                "prep_model_for_inference",
                "prep_inference_input",
                "get_batch_for_context_window",
                "run_one_forward_step",
            ],
        ),
    ]
    problems = [
        f"{label}.{name}" for label, cls, names in wanted for name in names if not callable(getattr(cls, name, None))
    ]
    if problems:
        return [f"no {', '.join(problems)}"]
    sampler = inspect.signature(classes.controller._dynamic_step_sample_logits).parameters
    if (len(sampler) == 2) != api.sampler_takes_logits:
        problems.append(
            f"TextGenerationController._dynamic_step_sample_logits takes ({', '.join(sampler)}), "
            f"expected {'(self, logits)' if api.sampler_takes_logits else '(self)'}"
        )
    wrapper = list(inspect.signature(classes.wrapper.__init__).parameters)
    expected = (
        ["self", "model", "inference_context"]
        if api.inference_config
        else ["self", "model", "inference_wrapper_config", "inference_context"]
    )
    if wrapper[: len(expected)] != expected:
        problems.append(f"GPTInferenceWrapper takes ({', '.join(wrapper)}), expected ({', '.join(expected)}, ...)")
    return problems


# -- the static and dynamic inference pieces ----------------------------------------------------------


def pp_microbatch_threshold(pp_microbatch_tokens: int | None) -> int | None:
    """0.16's ``inference_batch_times_seqlen_threshold`` for ``pp_microbatch_tokens`` (None: 512;
    -1: never split); None on later versions, which have no micro-batched prefill and so refuse
    any other value than None or -1 (a ValueError) rather than take a setting that does nothing."""
    api = mcore_api()
    if api.pp_microbatched_prefill:
        return PP_MICROBATCH_TOKENS_DEFAULT if pp_microbatch_tokens is None else pp_microbatch_tokens
    if pp_microbatch_tokens not in (None, -1):
        raise ValueError(
            f"pp_microbatch_tokens={pp_microbatch_tokens}: megatron-core {api.version} has no micro-batched "
            "pipeline-parallel prefill (removed in 0.17); leave pp_microbatch_tokens unset (None)"
        )
    return None


def inference_wrapper(
    model: torch.nn.Module,
    context,
    *,
    padded_vocab_size: int,
    max_batch_size: int,
    max_sequence_length: int,
    pp_microbatch_tokens: int | None,
):
    """megatron's ``GPTInferenceWrapper`` of ``model`` over ``context`` (``pp_microbatch_tokens``:
    see ``pp_microbatch_threshold``)."""
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper

    threshold = pp_microbatch_threshold(pp_microbatch_tokens)
    if mcore_api().inference_config:
        return GPTInferenceWrapper(model, context)
    from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig
    from megatron.core.utils import get_model_config

    config = get_model_config(model)
    wrapper_config = InferenceWrapperConfig(
        hidden_size=config.hidden_size,
        params_dtype=config.params_dtype,
        inference_batch_times_seqlen_threshold=threshold,
        padded_vocab_size=padded_vocab_size,
        inference_max_requests=max_batch_size,
        inference_max_seq_length=max_sequence_length,
        fp32_residual_connection=config.fp32_residual_connection,
    )
    return GPTInferenceWrapper(model, wrapper_config, context)


def dynamic_context(model_config, *, layers_on_stage: int, settings: dict):
    """megatron's ``DynamicInferenceContext`` (the paged KV cache, allocated here).

    ``settings``: ``InferenceConfig`` field names and values (block_size_tokens, buffer_size_gb,
    max_requests, max_tokens, max_sequence_length, num_cuda_graphs, ...), which 0.16 takes as
    keyword arguments next to the model's shape."""
    from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext

    api = mcore_api()
    if not api.inference_config:
        shape = dict(
            params_dtype=model_config.params_dtype,
            num_layers=layers_on_stage,
            kv_channels=model_config.kv_channels,
            num_attention_heads=model_config.num_query_groups or model_config.num_attention_heads,
            tensor_model_parallel_size=model_config.tensor_model_parallel_size,
            pipeline_model_parallel_size=model_config.pipeline_model_parallel_size,
        )
        legacy = {k: v for k, v in settings.items() if k != "enable_chunked_prefill"}  # an engine argument there
        return DynamicInferenceContext(**shape, **legacy)
    from megatron.core.inference.config import InferenceConfig, KVCacheManagementMode

    even = model_config.num_layers // model_config.pipeline_model_parallel_size
    if layers_on_stage != even:
        raise ValueError(
            f"this pipeline stage has {layers_on_stage} layers, not num_layers / PP = {even}: megatron-core "
            f"{api.version}'s dynamic context sizes the KV cache for an even split; "
            "use rollout.generation.backend=static"
        )
    fields = {f.name for f in dataclasses.fields(InferenceConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise UnsupportedMegatronError(
            f"megatron-core {api.version}'s InferenceConfig has no {unknown}; use rollout.generation.backend=static"
        )
    # RECOMPUTE: the only mode whose release frees the KV cache and request tensors (PERSIST, the
    # default, keeps them; OFFLOAD copies them to pinned host memory).
    config = InferenceConfig(**settings, kv_cache_management_mode=KVCacheManagementMode.RECOMPUTE)
    return DynamicInferenceContext(model_config, config)


def dynamic_engine(controller, context):
    """megatron's ``DynamicInferenceEngine``; chunked prefill off and no seed of its own (our
    sampler has its own stream)."""
    from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine

    if mcore_api().inference_config:
        return DynamicInferenceEngine(controller, context)
    # 0.16 asserts an int seed that nothing reads here, and takes chunked prefill as an argument.
    return DynamicInferenceEngine(controller, context, random_seed=0, enable_chunked_prefill=False)


def release_dynamic_context(context) -> None:
    """Free the context's KV cache and request tensors now, and fail if any tensor stays an
    attribute of it (a megatron-core whose release keeps memory must not pass unnoticed)."""
    getattr(context, mcore_api().kv_release_method)()
    kept = sorted(name for name, value in vars(context).items() if isinstance(value, torch.Tensor))
    if kept:
        raise UnsupportedMegatronError(
            f"megatron-core {mcore_api().version}'s {mcore_api().kv_release_method}() kept {kept} allocated; "
            "the KV cache would stay through training"
        )


def kv_block_allocator(context):
    return getattr(context, mcore_api().block_allocator_attribute)


def last_token_logits_only(context) -> bool:
    """Whether the context has the model compute the last token's logits only."""
    holder = context.config if mcore_api().inference_config else context
    return bool(holder.materialize_only_last_token_logits)


# -- the sampler hook ---------------------------------------------------------------------------------


@functools.cache
def sampling_controller_class():
    """megatron's ``TextGenerationController`` whose dynamic-batching sampler is replaced by
    ``controller.nemo_craft_sample(logits_NV, n) -> tokens_N`` (logits_NV: [n, V'] of the n active
    requests where this rank has them, else None); nothing else of megatron's changes."""
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    api = mcore_api()

    class NemoCraftController(TextGenerationController):
        nemo_craft_sample: Callable | None = None

        if api.sampler_takes_logits:

            def _dynamic_step_sample_bookkeeping(self):
                """megatron groups rows by their sampling settings for its own sampler; unused."""

            def _dynamic_step_sample_logits(self, logits):
                self._nemo_craft_step(logits)
        else:

            def _dynamic_step_sample_logits(self):
                self._nemo_craft_step(self._all_logits_cuda)

        def _nemo_craft_step(self, logits):
            context = self.inference_wrapped_model.inference_context
            n = context.total_request_count - context.paused_request_count
            logits_NV = None if logits is None else logits.reshape(-1, logits.shape[-1])[:n]
            tokens_N = self.nemo_craft_sample(logits_NV, n)
            if api.sampler_rebinds_tokens:
                self._sampled_tokens_cuda = tokens_N
            else:
                self._sampled_tokens_cuda[:n] = tokens_N

    return NemoCraftController
