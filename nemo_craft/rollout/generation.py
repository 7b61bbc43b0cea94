"""In-process generation with the training model: ``Generator.generate(prompts) -> results``.

    gen = Generator(model_chunks, tokenizer, GenerationConfig(temperature=1.0, top_p=0.95))
    results = gen.generate([[1, 2, 3], [4, 5]], max_new_tokens=[64, 32], seed=7)
    results[0].token_ids, results[0].logprobs, results[0].finish_reason

Every rank of a model-parallel group (TP x PP) calls ``generate`` with the same prompts, budgets
and seed; every rank gets the same results. Data-parallel ranks generate independently (give
each its own prompts and seed).

The backend is chosen by ``GenerationConfig.backend`` (``resolve_backend``): ``static`` is
megatron-core's static KV cache (``nemo_craft.rollout.static_backend``; CPU and GPU, any dtype);
``dynamic`` is megatron's ``DynamicInferenceEngine`` with a paged KV cache and in-flight batching
(``nemo_craft.rollout.dynamic_backend``; a CUDA GPU, flash-attn >= 2.7.3 or FlashAttention-3, a
bf16 / fp16 model); ``auto`` picks dynamic where it can run and static elsewhere (on the CPU, for
fp32 models); ``vllm`` is a vLLM engine in the same processes, refit from the chunks
(``nemo_craft.rollout.vllm_backend``; CUDA or CPU, pipeline parallel 1; never picked by auto).
All take the same sampling settings and give the same results for greedy decoding (up to kernel
rounding: see ``dynamic_backend``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.config import BACKENDS, GenerationConfig
from nemo_craft.rollout.stopping import FINISH_REASONS, StopCriteria

if TYPE_CHECKING:
    from nemo_craft.rollout.dynamic_backend import DynamicCapability

__all__ = ["GenerationResult", "Generator", "GenerationTokenizer", "resolve_backend"]


@dataclass
class GenerationResult:
    """One generated continuation."""

    token_ids: list[int]
    """The sampled tokens (a final EOS / stop token included)."""
    logprobs: list[float]
    """log pi(token) under the sampling temperature's softmax (raw logits when greedy), one per token."""
    finish_reason: str
    """"eos", "stop" (a stop string) or "length" (the budget); see ``stopping.FINISH_REASONS``."""
    text: str = ""
    """The tokens decoded."""

    def __post_init__(self) -> None:
        assert self.finish_reason in FINISH_REASONS, self.finish_reason
        assert len(self.token_ids) == len(self.logprobs)


class GenerationTokenizer(Protocol):
    """What generation needs of a tokenizer."""

    vocab_size: int

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generation (EOS, a chat model's end-of-turn token)."""

    def decode(self, ids: Sequence[int]) -> str: ...


def resolve_backend(requested: str, capability: Callable[[], DynamicCapability]) -> str:
    """The backend that runs: "static", "dynamic" or "vllm" (only when asked for).

    ``capability`` gives the facts the dynamic backend needs (``DynamicCapability.probe``; read
    only when ``requested`` is not "static"). "auto" takes dynamic exactly when they are all
    there; "dynamic" without them is a ValueError naming what is missing and the alternative."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    if requested in ("static", "vllm"):
        return requested
    problem = capability().problem()
    if problem is None:
        return "dynamic"
    if requested == "dynamic":
        raise ValueError(
            f"rollout.generation.backend=dynamic (megatron's DynamicInferenceEngine) cannot run here: {problem}. "
            "Use rollout.generation.backend=static, or auto (dynamic where it can run, static elsewhere)"
        )
    return "static"


class Generator:
    """Samples continuations of token prompts with this rank's model chunks.

    Args:
        model_chunks: the model as megatron builds it: a list of chunks (or one module).
        tokenizer: gives ``stop_ids``, ``vocab_size`` and ``decode`` (stop strings, texts).
        config: the default sampling settings; ``generate(config=...)`` overrides them per call.
        model_cfg: the policy's ``ModelConfig``; needed by the vllm backend (its engine's
            architecture and the names of the weight refit).
    """

    def __init__(
        self, model_chunks, tokenizer: GenerationTokenizer, config: GenerationConfig | None = None, model_cfg=None
    ):
        self.config = config if config is not None else GenerationConfig()
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.model_chunks = list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]
        self._calls = 0
        self._backend = self._build_backend(self.config)

    def _build_backend(self, config: GenerationConfig):
        from megatron.core.utils import get_model_config, unwrap_model

        from nemo_craft.rollout.dynamic_backend import DynamicCapability

        vocab_size = config.vocab_size or self.tokenizer.vocab_size
        max_len = config.max_sequence_length or unwrap_model(self.model_chunks[0]).max_sequence_length
        name = resolve_backend(
            config.backend, lambda: DynamicCapability.probe(get_model_config(self.model_chunks[0]).params_dtype)
        )
        paged = dict(  # the engines with a paged KV cache: megatron's dynamic one and vLLM
            vocab_size=vocab_size,
            max_batch_size=config.max_batch_size,
            max_sequence_length=max_len,
            kv_cache_gb=config.kv_cache_gb,
            max_tokens_per_step=config.max_tokens_per_step,
            cuda_graphs=config.cuda_graphs,
        )
        if name == "vllm":
            if self.model_cfg is None:
                raise ValueError("backend=vllm needs the policy's ModelConfig: Generator(..., model_cfg=)")
            from nemo_craft.rollout.vllm_backend import VllmBackend

            return VllmBackend(self.model_chunks, self.model_cfg, seed=config.seed, **paged)
        if name == "dynamic":
            from nemo_craft.rollout.dynamic_backend import DynamicBackend

            return DynamicBackend(self.model_chunks, pp_microbatch_tokens=config.pp_microbatch_tokens, **paged)
        if config.cuda_graphs:
            warnings.warn(
                "cuda_graphs=true is ignored: backend=auto resolved to static here (CUDA graphs are the "
                "dynamic backend's)",
                stacklevel=3,
            )
        from nemo_craft.rollout.static_backend import StaticBackend

        return StaticBackend(
            self.model_chunks,
            vocab_size=vocab_size,
            max_batch_size=config.max_batch_size,
            max_sequence_length=max_len,
            pp_microbatch_tokens=config.pp_microbatch_tokens,
        )

    @property
    def backend_name(self) -> str:
        return {"StaticBackend": "static", "DynamicBackend": "dynamic", "VllmBackend": "vllm"}[
            type(self._backend).__name__
        ]

    def weights_changed(self) -> None:
        """The chunks' parameters changed (an optimizer step, a checkpoint or warm start loaded):
        a backend with its own copy of the weights (vllm) refits before it next generates. The
        megatron backends run the chunks themselves and need nothing."""
        if hasattr(self._backend, "weights_changed"):
            self._backend.weights_changed()

    def release_memory(self) -> None:
        """Generation is over until the next rollout: a backend that can lend its memory back to
        training (vllm on CUDA: sleep mode) does so; it is taken back by the next refit."""
        if hasattr(self._backend, "release_memory"):
            self._backend.release_memory()

    def read_stats(self) -> dict[str, float]:
        """The backend's counters since the last call (vllm: prefix-cache tokens queried and hit)."""
        return self._backend.read_stats() if hasattr(self._backend, "read_stats") else {}

    @property
    def max_sequence_length(self) -> int:
        """Prompt + generated tokens of one row, at most."""
        return self._backend.max_sequence_length

    def generate(
        self,
        prompts_token_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | Sequence[int] | None = None,
        seed: int | None = None,
        config: GenerationConfig | None = None,
    ) -> list[GenerationResult]:
        """Continue every prompt; one result per prompt, in order.

        Args:
            prompts_token_ids: token ids of each prompt (non-empty).
            max_new_tokens: budget of every row, or one per row (e.g. min(turn budget, what is
                left of the episode's)); None: ``config.max_new_tokens``. A budget of 0 gives
                an empty result with finish_reason "length" without running the model.
            seed: seed of this call's sampling stream (the same seed, prompts and layout give
                the same tokens); None: ``config.seed`` + the number of earlier calls.
            config: sampling settings for this call (e.g. the validation temperature); its
                backend and the backend's limits (batch, length, KV cache, CUDA graphs) are
                those the generator was built with.
        """
        cfg = config if config is not None else self.config
        n = len(prompts_token_ids)
        if max_new_tokens is None:
            max_new_tokens = cfg.max_new_tokens
        budgets = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(b) for b in max_new_tokens]
        if len(budgets) != n:
            raise ValueError(f"{len(budgets)} budgets for {n} prompts")
        if any(b < 0 for b in budgets):
            raise ValueError(f"token budgets must be >= 0, got {budgets}")
        if any(len(p) == 0 for p in prompts_token_ids):
            raise ValueError("every prompt needs at least one token")
        for i, (p, b) in enumerate(zip(prompts_token_ids, budgets)):
            if len(p) + b > self.max_sequence_length:
                raise ValueError(
                    f"prompt {i}: {len(p)} prompt tokens + budget {b} exceed "
                    f"max_sequence_length={self.max_sequence_length}"
                )
        if seed is None:
            seed = cfg.seed + self._calls
        self._calls += 1

        generator = torch.Generator(device=compute_device())
        generator.manual_seed(int(seed))
        stop = StopCriteria((*self.tokenizer.stop_ids, *cfg.stop_token_ids), cfg.stop_strings, self.tokenizer.decode)
        rows = [i for i in range(n) if budgets[i] > 0]
        outputs = (
            self._backend.generate(
                [list(prompts_token_ids[i]) for i in rows],
                [budgets[i] for i in rows],
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                stop=stop,
                generator=generator,
            )
            if rows
            else []
        )
        results = [GenerationResult([], [], "length") for _ in range(n)]
        for i, (tokens, logprobs, reason) in zip(rows, outputs):
            results[i] = GenerationResult(tokens, logprobs, reason, self.tokenizer.decode(tokens))
        return results

    def with_config(self, **changes) -> GenerationConfig:
        """A copy of the default config with ``changes`` (validated), for ``generate(config=)``."""
        return dataclasses.replace(self.config, **changes)
