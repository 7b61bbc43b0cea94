"""In-process generation with the training model: ``Generator.generate(prompts) -> results``.

    gen = Generator(model_chunks, tokenizer, GenerationConfig(temperature=1.0, top_p=0.95))
    results = gen.generate([[1, 2, 3], [4, 5]], max_new_tokens=[64, 32], seed=7)
    results[0].token_ids, results[0].logprobs, results[0].finish_reason

Every rank of a model-parallel group (TP x PP) calls ``generate`` with the same prompts, budgets
and seed; every rank gets the same results. Data-parallel ranks generate independently (give
each its own prompts and seed).

The backend is chosen by ``GenerationConfig.backend`` (``nemo_craft.rollout.backends``: the
``GenerationBackend`` protocol, the name -> class table, ``resolve_backend``): ``static`` is
megatron-core's static KV cache (``nemo_craft.rollout.static_backend``; CPU and GPU, any dtype);
``dynamic`` is megatron's ``DynamicInferenceEngine`` with a paged KV cache and in-flight batching
(``nemo_craft.rollout.dynamic_backend``; a CUDA GPU, flash-attn >= 2.7.3 or FlashAttention-3, a
bf16 / fp16 model); ``auto`` picks dynamic where it can run and static elsewhere (on the CPU, for
fp32 models); ``vllm`` is a vLLM engine in the same processes, refit from the chunks
(``nemo_craft.rollout.vllm_backend``; CUDA or CPU, pipeline parallel 1; never picked by auto).
All take the same sampling settings and give the same results for greedy decoding (up to kernel
rounding: see ``dynamic_backend``). More are registered with ``register_backend``
(docs/extending.md#generation-backend).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.backends import BACKENDS, backend_class, resolve_backend
from nemo_craft.rollout.stopping import FINISH_REASONS, StopCriteria

__all__ = ["BACKENDS", "GenerationConfig", "GenerationResult", "Generator", "GenerationTokenizer", "resolve_backend"]

Backend = Literal["auto", "static", "dynamic", "vllm"]
"""The built-in names; ``BACKENDS`` (what the configs accept) has the registered ones too."""


@dataclass
class GenerationConfig:
    """How actions are sampled."""

    backend: Backend = "auto"
    """"static" (megatron's static KV cache; CPU and GPU), "dynamic" (megatron's dynamic engine:
    paged KV cache, in-flight batching; CUDA, flash-attn >= 2.7.3, bf16 / fp16), "vllm" (a vLLM
    engine colocated with training, refit after every update; pipeline parallel 1) or "auto"
    (dynamic where it can run, else static)."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens up to this probability mass (1: off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0: off); combined with top_p, top-k applies first."""
    max_new_tokens: int = 512
    """Default token budget of one generation (one turn's action) when ``generate`` is given
    none; the paper uses 512 (docs/algorithm.md#the-papers-evaluation)."""
    stop_strings: tuple[str, ...] = ("</action>",)
    """A row ends as soon as its text contains one of these (the completing token is kept)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a row besides the tokenizer's ``stop_ids`` (its EOS and end-of-turn
    tokens); the drawn id is kept as the last token."""
    seed: int = 0
    """Seed of the sampling stream when ``generate`` is called without one (then each call
    continues from the previous: call i uses seed + i)."""
    max_batch_size: int = 64
    """Rows per forward pass; more rows run in several passes (static: its KV cache holds this
    many rows; dynamic: requests decoded together, a multiple of the tensor-parallel size)."""
    max_sequence_length: int | None = None
    """Prompt + generated tokens of one row, at most; None: the model's max_sequence_length."""
    pp_microbatch_tokens: int | None = None
    """megatron-core 0.16 only: pipeline-parallel forwards over more tokens than this are split
    into micro-batches so the stages overlap (its inference_batch_times_seqlen_threshold; -1:
    never; None: 512). megatron-core 0.17 and later have no such split: there any value but None
    or -1 is a ValueError when the generator is built."""
    vocab_size: int | None = None
    """Vocabulary to sample from; None: the tokenizer's. Logits beyond it are padding."""
    kv_cache_gb: float = 4.0
    """Dynamic and vllm backends: GiB of each rank's paged KV cache (megatron's buffer_size_gb), allocated for
    each generate call (for the run with cuda_graphs). It must hold one max_sequence_length row
    (checked when the generator is built); rows beyond what it holds wait or are paused."""
    max_tokens_per_step: int = 16384
    """Dynamic and vllm backends: tokens of one forward pass, prompt tokens and decode rows together
    (megatron's max_tokens); at least max_batch_size and the longest prompt (prompts are not split)."""
    cuda_graphs: bool = False
    """Dynamic and vllm backends: run decode steps as CUDA graphs (vllm: else eager). Off by
    default because megatron captures them per layer of a model built with TransformerConfig
    cuda_graph_impl="local", which then graphs training forwards too; the flag must match the
    model (a ValueError says which way)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0: off), got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.stop_strings, str):
            raise ValueError(
                f"stop_strings must be a list of strings, got the string "
                f"{self.stop_strings!r}; write [{self.stop_strings!r}]"
            )
        self.stop_strings = tuple(self.stop_strings)
        self.stop_token_ids = tuple(int(i) for i in self.stop_token_ids)
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {self.max_batch_size!r}")
        if self.max_sequence_length is not None and self.max_sequence_length < 2:
            raise ValueError(f"max_sequence_length must be >= 2 or None, got {self.max_sequence_length!r}")
        self._check_dynamic_fields()
        if self.pp_microbatch_tokens not in (None, -1) and self.pp_microbatch_tokens < 1:
            raise ValueError(
                f"pp_microbatch_tokens must be >= 1, -1 (never split) or None, got {self.pp_microbatch_tokens!r}"
            )

    def _check_dynamic_fields(self) -> None:
        """The dynamic backend's knobs; those that only bind it are skipped for backend=static."""
        if (
            isinstance(self.kv_cache_gb, bool)
            or not isinstance(self.kv_cache_gb, (int, float))
            or not self.kv_cache_gb > 0
        ):
            raise ValueError(f"kv_cache_gb must be a number > 0 (GiB per rank), got {self.kv_cache_gb!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        if self.cuda_graphs and self.backend == "static":
            raise ValueError(
                "cuda_graphs=true applies to the dynamic backend; set backend=dynamic (or auto), or cuda_graphs=false"
            )
        if not isinstance(self.max_tokens_per_step, int) or self.max_tokens_per_step < 1:
            raise ValueError(f"max_tokens_per_step must be an int >= 1, got {self.max_tokens_per_step!r}")
        if self.backend == "static":
            return
        if self.max_tokens_per_step < self.max_batch_size:
            raise ValueError(
                f"max_tokens_per_step={self.max_tokens_per_step} < max_batch_size={self.max_batch_size}: "
                "a decode step of every row must fit one forward pass; raise it"
            )
        if self.max_sequence_length is not None and self.max_tokens_per_step < self.max_sequence_length - 1:
            raise ValueError(
                f"max_tokens_per_step={self.max_tokens_per_step} < max_sequence_length - 1 = "
                f"{self.max_sequence_length - 1}: a whole prompt must fit one forward pass; raise it"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


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
        self._backend_name = resolve_backend(
            config.backend, lambda: DynamicCapability.probe(get_model_config(self.model_chunks[0]).params_dtype)
        )
        return backend_class(self._backend_name).build(
            self.model_chunks, config, vocab_size=vocab_size, max_sequence_length=max_len, model_cfg=self.model_cfg
        )

    @property
    def backend_name(self) -> str:
        """The registered name of the backend that runs (what "auto" resolved to)."""
        return self._backend_name

    def weights_changed(self) -> None:
        """The chunks' parameters changed (an optimizer step, a checkpoint or warm start loaded):
        a backend with its own copy of the weights (vllm) refits before it next generates. The
        megatron backends run the chunks themselves and need nothing."""
        self._backend.weights_changed()

    def release_memory(self) -> None:
        """Generation is over until the next rollout: a backend that can lend its memory back to
        training (vllm on CUDA: sleep mode) does so; it is taken back by the next refit."""
        self._backend.release_memory()

    def read_stats(self) -> dict[str, float]:
        """The backend's counters since the last call (vllm: prefix-cache tokens queried and hit)."""
        return self._backend.read_stats()

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
