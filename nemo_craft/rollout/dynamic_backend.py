"""Generation with megatron-core's ``DynamicInferenceEngine`` (``backend="dynamic"``; GPU only).

megatron brings the paged KV cache, in-flight batching and the flash-attn kernels; through two
hooks of its ``TextGenerationController`` (``dynamic_engine_adapter``) every step samples with the
static backend's sampler and the same ``StopCriteria`` decides each row, so a row ends on the token
that completed its stop. Sampling is reproducible from the seed; greedy tokens equal the static
backend's up to kernel rounding. The engine and its KV cache live for one ``generate`` call (for the
run with ``cuda_graphs``). Details: docs/rollout.md#the-dynamic-backend.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemo_craft.parallel import mcore_compat
from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.backend_common import generation_mode, paged_engine_kwargs, sample_and_share
from nemo_craft.rollout.dynamic_engine_adapter import (
    KV_BLOCK_TOKENS,
    EngineSpec,
    build_engine,
    release_kv_cache,
    run_requests,
)
from nemo_craft.rollout.stopping import StopCriteria

__all__ = [
    "DynamicBackend",
    "DynamicCapability",
    "MIN_FLASH_ATTN",
    "check_kv_cache",
    "kv_block_bytes",
    "kv_cache_blocks",
]

MIN_FLASH_ATTN = "2.7.3"
"""megatron's dynamic attention asserts flash-attn >= 2.7.3 (paged-KV varlen kernels) or FA3."""


@dataclass(frozen=True)
class DynamicCapability:
    """What the dynamic backend needs of this process, as facts (``probe`` reads them)."""

    cuda: bool
    """torch sees a CUDA GPU."""
    flash_attn: str | None
    """Version of the importable ``flash_attn`` package; None when it does not import."""
    flash_attn_3: bool
    """FlashAttention-3 (Hopper) imports; megatron accepts it in place of flash-attn 2."""
    params_dtype: torch.dtype | None = None
    """The model's parameter dtype (None: not known yet)."""

    @classmethod
    def probe(cls, params_dtype: torch.dtype | None = None) -> DynamicCapability:
        return cls(torch.cuda.is_available(), *_flash_attn_installed(), params_dtype)

    def problem(self) -> str | None:
        """Why the dynamic backend cannot run, naming everything that is missing; None when it can."""
        missing = []
        if not self.cuda:
            missing.append("no CUDA GPU (torch.cuda.is_available() is False)")
        if not self.flash_attn_3 and not _version_at_least(self.flash_attn, MIN_FLASH_ATTN):
            have = "not installed" if self.flash_attn is None else f"{self.flash_attn} is installed"
            missing.append(f"flash-attn >= {MIN_FLASH_ATTN} (or FlashAttention-3) is needed and {have}")
        if self.params_dtype is not None and self.params_dtype not in (torch.bfloat16, torch.float16):
            missing.append(
                f"the model's params_dtype is {self.params_dtype} and flash-attn kernels take bf16 / "
                "fp16 only (model.params_dtype=bf16)"
            )
        return "; ".join(missing) or None


def kv_block_bytes(*, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Bytes of one KV block of ``KV_BLOCK_TOKENS`` tokens on one rank (``layers``: this pipeline
    stage's; ``kv_heads``: this tensor-parallel rank's), keys and values."""
    return dtype_bytes * 2 * layers * KV_BLOCK_TOKENS * kv_heads * head_dim


def kv_cache_blocks(kv_cache_gb: float, block_bytes: int) -> int:
    """Blocks that requests can use in a ``kv_cache_gb`` buffer, as megatron divides it: whole
    blocks, at least two, one of them its padding block."""
    return max(2, int(kv_cache_gb * 1024**3) // block_bytes) - 1


def check_kv_cache(kv_cache_gb: float, block_bytes: int, max_sequence_length: int) -> None:
    """A ValueError unless the cache holds one whole sequence (then every request can finish)."""
    usable = kv_cache_blocks(kv_cache_gb, block_bytes)
    need = math.ceil(max_sequence_length / KV_BLOCK_TOKENS) + 1  # +1: a row claims its next block one token early
    if usable < need:
        raise ValueError(
            f"rollout.generation.kv_cache_gb={kv_cache_gb} holds {usable} KV blocks of {KV_BLOCK_TOKENS} tokens on "
            f"this rank; one sequence of max_sequence_length={max_sequence_length} needs {need}: raise it "
            f"to at least {(need + 1) * block_bytes / 1024**3:.3g}"
        )


class DynamicBackend:
    """Generation on this rank's model chunk with megatron's dynamic engine (``StaticBackend``'s
    contract: ``generate(prompts, budgets, ...) -> [(token_ids, logprobs, finish_reason)]``).

    Args:
        model_chunks: this rank's model chunks (one chunk: no virtual pipeline), bf16 or fp16.
        vocab_size: the tokenizer's vocabulary (logits beyond it are padding, never sampled).
        max_batch_size: requests decoded together at most (megatron's ``max_requests``).
        max_sequence_length: prompt plus generated tokens of one row, at most.
        kv_cache_gb: GiB of this rank's paged KV cache (megatron's ``buffer_size_gb``).
        max_tokens_per_step: tokens of one forward pass (megatron's ``max_tokens``); a whole
            prompt must fit (chunked prefill is off).
        cuda_graphs: decode steps as CUDA graphs; the model must be built with
            ``cuda_graph_impl="local"`` (and only then).
        pp_microbatch_tokens: megatron-core 0.16's ``inference_batch_times_seqlen_threshold`` (PP > 1;
            None: 512); later versions refuse any value but None / -1 (``mcore_compat``).
    """

    def __init__(
        self,
        model_chunks: Sequence[torch.nn.Module],
        *,
        vocab_size: int,
        max_batch_size: int,
        max_sequence_length: int,
        kv_cache_gb: float,
        max_tokens_per_step: int,
        cuda_graphs: bool,
        pp_microbatch_tokens: int | None = None,
    ):
        from megatron.core import parallel_state as ps
        from megatron.core.utils import get_model_config, unwrap_model

        if len(model_chunks) != 1:
            raise ValueError(
                f"generation needs exactly one model chunk per rank, got {len(model_chunks)}: "
                "megatron's inference does not support virtual pipeline parallel"
            )
        self.model = model_chunks[0]
        config = get_model_config(self.model)
        mcore_compat.pp_microbatch_threshold(pp_microbatch_tokens)  # refused here, not at the first rollout
        problem = DynamicCapability.probe(config.params_dtype).problem()
        if problem is not None:
            raise ValueError(f"backend='dynamic' cannot run here: {problem}; use rollout.generation.backend=static")
        unwrapped = unwrap_model(self.model)
        if vocab_size > unwrapped.vocab_size:
            raise ValueError(
                f"tokenizer vocab_size {vocab_size} > the model's padded vocabulary {unwrapped.vocab_size}"
            )
        tp = ps.get_tensor_model_parallel_world_size()
        if max_batch_size % tp:
            raise ValueError(
                f"rollout.generation.max_batch_size={max_batch_size} must be a multiple of the tensor-parallel "
                f"size {tp} for the dynamic backend"
            )
        if max_tokens_per_step < max_sequence_length - 1:
            raise ValueError(
                f"rollout.generation.max_tokens_per_step={max_tokens_per_step} < max_sequence_length - 1 = "
                f"{max_sequence_length - 1}: a whole prompt must fit one forward pass; raise it"
            )
        graphed = getattr(config, "cuda_graph_impl", "none") == "local"
        if cuda_graphs != graphed:
            raise ValueError(
                f"rollout.generation.cuda_graphs={cuda_graphs} but the model was built with cuda_graph_impl="
                f"{getattr(config, 'cuda_graph_impl', 'none')!r}: megatron captures graphs per layer, which needs "
                "cuda_graph_impl='local' in the TransformerConfig (and then graphs training forwards too); "
                "set both or neither"
            )
        layers = len(unwrapped.decoder.layers)
        kv_heads = (config.num_query_groups or config.num_attention_heads) // tp
        block_bytes = kv_block_bytes(
            layers=layers, kv_heads=kv_heads, head_dim=config.kv_channels, dtype_bytes=config.params_dtype.itemsize
        )
        check_kv_cache(kv_cache_gb, block_bytes, max_sequence_length)
        self.vocab_size = vocab_size
        self.max_sequence_length = max_sequence_length
        self._spec = EngineSpec(
            max_sequence_length=max_sequence_length,
            kv_cache_gb=kv_cache_gb,
            max_requests=max_batch_size,
            max_tokens=max_tokens_per_step,
            cuda_graphs=cuda_graphs,
            pp_microbatch_tokens=pp_microbatch_tokens,
            padded_vocab_size=unwrapped.vocab_size,
            layers_on_stage=layers,
        )
        self._engine = None  # kept between calls only with CUDA graphs
        self._next_id = 0

    # -- GenerationBackend (nemo_craft.rollout.backends) ---------------------------------------------

    holds_weight_copy = False  # it runs the training chunks
    paged_kv_cache = True  # kv_cache_gb per rank
    auto_preference = 10  # auto's first choice where it can run

    @classmethod
    def problem(cls, capability) -> str | None:
        """What of CUDA, flash-attn >= 2.7.3 (or FlashAttention-3) and a bf16 / fp16 model is missing."""
        return capability().problem()

    @classmethod
    def check_run(cls, parallel_cfg, model_cfg) -> None:
        """Nothing at start-up: what it needs is probed when the generator is built (``problem``)."""

    @classmethod
    def build(cls, model_chunks, config, *, vocab_size: int, max_sequence_length: int, model_cfg=None):
        return cls(
            model_chunks,
            vocab_size=vocab_size,
            max_sequence_length=max_sequence_length,
            pp_microbatch_tokens=config.pp_microbatch_tokens,
            **paged_engine_kwargs(config),
        )

    def weights_changed(self) -> None:
        """Nothing to do: it generates with the chunks themselves."""

    def release_memory(self) -> None:
        """Nothing to lend back: the KV cache is freed after each call (kept only with CUDA graphs)."""

    def read_stats(self) -> dict[str, float]:
        return {}

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        budgets: Sequence[int],
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        stop: StopCriteria,
        generator: torch.Generator,
    ) -> list[tuple[list[int], list[float], str]]:
        """``(token_ids, logprobs, finish_reason)`` per prompt, in order."""
        for i, (p, b) in enumerate(zip(prompts, budgets)):
            if len(p) + b > self.max_sequence_length:
                raise ValueError(
                    f"prompt {i}: {len(p)} prompt tokens + budget {b} exceed "
                    f"max_sequence_length={self.max_sequence_length}"
                )
        ids = list(range(self._next_id, self._next_id + len(prompts)))
        self._next_id += len(prompts)
        rows = _Rows(ids, budgets, stop)
        sample = functools.partial(
            self._sample, rows, dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        )
        with generation_mode(self.model):
            engine = self._engine if self._engine is not None else build_engine(self.model, self._spec)
            self._engine = None  # kept again only after a clean call: an interrupted one leaves requests behind
            try:
                run_requests(engine, ids, prompts, budgets, sample=sample, finished=rows.finish)
            except BaseException:
                release_kv_cache(engine)
                raise
            if self._spec.cuda_graphs:
                self._engine = engine
            else:
                release_kv_cache(engine)
        return rows.results()

    def _sample(self, rows: _Rows, sampling: dict, logits_NV: torch.Tensor | None, n: int) -> torch.Tensor:
        tokens_N, logp_N = sample_and_share(
            logits_NV, n, vocab_size=self.vocab_size, device=compute_device(), **sampling
        )
        rows.stage(tokens_N.tolist(), logp_N.tolist())
        return tokens_N


class _Rows:
    """Tokens, log-probs and finish reasons of one call's requests, fed one engine step at a time:
    ``stage`` takes the step's sampled tokens (in the engine's active order), ``finish`` pairs
    them with the active request ids and returns the ids that end now."""

    def __init__(self, ids: Sequence[int], budgets: Sequence[int], stop: StopCriteria):
        self.index = {rid: i for i, rid in enumerate(ids)}
        self.budgets = list(budgets)
        self.stop = stop
        self.tokens: list[list[int]] = [[] for _ in ids]
        self.logprobs: list[list[float]] = [[] for _ in ids]
        self.reasons: list[str | None] = [None] * len(ids)
        self._staged: tuple[list[int], list[float]] | None = None

    def stage(self, tokens: list[int], logprobs: list[float]) -> None:
        self._staged = (tokens, logprobs)

    def finish(self, active_ids: list[int]) -> set[int]:
        assert self._staged is not None, "megatron asked for finished rows before sampling a step"
        tokens, logprobs = self._staged
        self._staged = None
        assert len(tokens) == len(active_ids), (len(tokens), len(active_ids))
        done = set()
        for rid, token, logprob in zip(active_ids, tokens, logprobs):
            i = self.index[rid]
            assert self.reasons[i] is None, f"request {rid} was stepped after it finished"
            self.tokens[i].append(token)
            self.logprobs[i].append(logprob)
            self.reasons[i] = self.stop.check(self.tokens[i], self.budgets[i])
            if self.reasons[i] is not None:
                done.add(rid)
        return done

    def results(self) -> list[tuple[list[int], list[float], str]]:
        unfinished = [i for i, r in enumerate(self.reasons) if r is None]
        if unfinished:
            raise RuntimeError(
                f"megatron's dynamic engine ended without finishing rows {unfinished} (it fails a "
                "request it can never schedule); check rollout.generation.kv_cache_gb and max_tokens_per_step"
            )
        return list(zip(self.tokens, self.logprobs, self.reasons))


@functools.lru_cache(maxsize=1)
def _flash_attn_installed() -> tuple[str | None, bool]:
    """(flash-attn version or None, whether FlashAttention-3 imports), as megatron's attention
    imports them; any import failure (missing, or built for another CUDA / torch) counts as absent."""
    try:
        import flash_attn

        version = str(getattr(flash_attn, "__version__", None) or _dist_version("flash-attn"))
    except Exception:  # noqa: BLE001 - a broken build is as unusable as a missing one
        version = None
    fa3 = False
    for module in ("flash_attn_3.flash_attn_interface", "flashattn_hopper.flash_attn_interface"):
        try:
            __import__(module)
            fa3 = True
            break
        except Exception:  # noqa: BLE001
            continue
    return version, fa3


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _version_at_least(have: str | None, need: str) -> bool:
    from packaging.version import InvalidVersion, Version

    if have is None:
        return False
    try:
        return Version(have) >= Version(need)
    except InvalidVersion:
        return False
