"""In-process generation with the training model: ``Generator.generate(prompts) -> results``.

    gen = Generator(model_chunks, tokenizer, GenerationConfig(temperature=1.0, top_p=0.95))
    results = gen.generate([[1, 2, 3], [4, 5]], max_new_tokens=[64, 32], seed=7)
    results[0].token_ids, results[0].logprobs, results[0].finish_reason

Every rank of a model-parallel group (TP x PP) calls ``generate`` with the same prompts, budgets
and seed; every rank gets the same results. The backend (static, dynamic, vllm, auto, or one added
with ``register_backend``) is ``GenerationConfig.backend``: docs/rollout.md#the-generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.backends import backend_class, resolve_backend
from nemo_craft.rollout.config import GenerationConfig
from nemo_craft.rollout.stopping import FINISH_REASONS, StopCriteria

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

        from nemo_craft.rollout.dynamic_backend import DynamicCapability  # lazy: imports megatron's dynamic engine

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
