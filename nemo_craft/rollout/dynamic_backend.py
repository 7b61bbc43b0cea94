"""Generation with megatron-core's ``DynamicInferenceEngine`` (``backend="dynamic"``; GPU only).

What is megatron's and what is ours:

* megatron-core: the paged KV cache (``DynamicInferenceContext``: a buffer of ``kv_cache_gb`` per
  rank cut into 256-token blocks handed to requests as they grow), in-flight batching (the engine
  adds waiting requests whenever blocks and the per-step token budget allow, pauses or evicts
  rows when the cache is full and re-runs an evicted row's prompt + tokens later), the flash-attn
  prefill / decode kernels over the paged cache, and optionally CUDA graphs for decode steps.
* ours, through two hooks of its ``TextGenerationController`` (``dynamic_engine_adapter``, with
  each megatron-core version's hooks from ``nemo_craft.parallel.mcore_compat``): the sampler and
  the stop decision. megatron's sampler cannot combine top-k with top-p, draws from
  the padded vocabulary (clamping the draw), divides by a temperature of 0 (its greedy is
  top_k=1) and uses a generator seeded once per controller from
  ``TransformerConfig.inference_sampling_seed``; its stop conditions are one termination id and
  stop words matched as token sequences after the step (the row then runs one more step whose
  token is dropped). Here every step samples with ``sample_next_tokens`` (the
  static backend's sampler: same temperature / top-k / top-p semantics, log-probs of the
  untempered model over the true vocabulary) from the ``torch.Generator`` ``Generator.generate``
  seeded, on the last stage's TP rank 0, broadcast to the group; then the same ``StopCriteria``
  decides each row (EOS ids, stop token ids, stop strings on the decoded tail, the row's budget)
  and megatron finishes those rows at that step. So a row ends on the very token that completed
  its stop: the engine never generates past it and nothing is truncated afterwards.

Sampling is reproducible from the seed: the engine touches neither the global torch RNG nor
megatron's CUDA RNG tracker, and the order in which rows draw at each step (the engine's batch
order) is fixed by the prompts, budgets and this backend's settings. The draws differ from the
static backend's (rows draw in another order), so sampled tokens match it only in distribution;
greedy tokens are the same up to kernel rounding (flash-attn here, megatron's unfused or TE
attention there; both bf16 / fp16, as flash-attn has no fp32 kernels): a near tie may flip.

The engine is built for each ``generate`` call and dropped after it, so the KV cache does not
outlive the call, except with ``cuda_graphs``: graphs are captured once, so engine and cache are
kept for the run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemo_craft.parallel import mcore_compat
from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.backend_common import generation_mode, sample_and_share
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
