"""The ``rollout:`` section: how tasks are rolled out (``RolloutConfig``) and how each action is
sampled (``rollout.generation``: ``GenerationConfig``; ``rollout.validation``: the sampling of
validation and evaluation rollouts). Leaf module: plain dataclasses, no model, no process group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from nemo_craft.rollout.backends import BACKENDS

__all__ = ["BACKENDS", "PLACEMENTS", "GenerationConfig", "SamplingConfig", "RolloutConfig"]

PLACEMENTS = ("colocated", "disaggregated")

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
class SamplingConfig:
    """The ``rollout.validation:`` section: sampling of validation and ``nemo-craft evaluate``
    rollouts (training rollouts sample with ``rollout.generation``'s settings)."""

    temperature: float = 0.4
    """Sampling temperature (docs/algorithm.md#the-papers-evaluation); 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling (1.0: off)."""
    top_k: int = 0
    """Top-k sampling (0: off)."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"rollout.validation.temperature must be >= 0, got {self.temperature!r}")


_OBSERVATION_MESSAGES = ("observation", "prompt")
_DISAGGREGATED_BACKENDS = ("auto", "static", "vllm")
"""Engines that run on a rank of their own: the static engine (CPU and GPU) and vLLM (loads the
weights sent to it); "auto" takes vLLM where it is installed, else static. megatron's dynamic
engine is built on the training model's chunks."""


@dataclass
class RolloutConfig:
    """How tasks are rolled out (the ``rollout:`` section of the run config)."""

    tasks_per_step: int = 8
    """N: tasks of one training step (the trainer splits them over data-parallel ranks)."""
    group_size: int = 8
    """G: siblings (independent rollouts) of each task."""
    max_tokens_per_episode: int = 4096
    """Budget of all actions of an episode together; the episode ends when it is spent."""
    max_turns: Optional[int] = None
    """Turn limit of the runner (None: only the environment's own ``max_turns``)."""
    system_prompt: Optional[str] = None
    """The student's system message (None: none)."""
    observation_message: str = "observation"
    """User message of turns after the first: "observation" (the environment's observation
    text) or "prompt" (the environment's full rendered prompt, which repeats task and history)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """How each action is sampled in training rollouts: the backend, the behaviour temperature T
    (every training-side log-prob, pi_old, pi_theta, the teacher and pi_ref, is computed at the
    same T, so that the importance ratio compares the distributions that sampled; must be > 0),
    the per-action token budget ``max_new_tokens``, the stop strings (default: the environment's)."""
    validation: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling of validation and evaluation rollouts."""
    placement: str = "colocated"
    """Where generation runs (docs/async.md): "colocated" (the training ranks generate between
    updates) or "disaggregated" (``generation_ranks`` of the world run the engines and the
    environments, the others train, and the new weights are sent to the engines after each update)."""
    generation_ranks: int = 0
    """Ranks that only generate under placement=disaggregated (>= 1 there; 0 when colocated)."""
    max_staleness: int = 0
    """K: generation runs ahead of training by at most K policy versions (0: synchronous; > 0 needs
    placement=disaggregated). A batch's trajectories are at most K updates old."""

    def __post_init__(self) -> None:
        if isinstance(self.generation, dict):
            self.generation = GenerationConfig(**self.generation)
        if isinstance(self.validation, dict):
            self.validation = SamplingConfig(**self.validation)
        for name in ("tasks_per_step", "group_size", "max_tokens_per_episode"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"rollout.{name} must be an int >= 1, got {value!r}")
        if self.max_turns is not None and (not isinstance(self.max_turns, int) or self.max_turns < 1):
            raise ValueError(f"rollout.max_turns must be an int >= 1 or None, got {self.max_turns!r}")
        if self.observation_message not in _OBSERVATION_MESSAGES:
            raise ValueError(
                f"rollout.observation_message must be one of {_OBSERVATION_MESSAGES}, got {self.observation_message!r}"
            )
        self.generation_config(validation=True)  # validates the sampling fields with GenerationConfig's checks
        self._check_placement()

    def _check_placement(self) -> None:
        """The placement fields on their own; ``check_placement`` adds what needs the world size."""
        if self.placement not in PLACEMENTS:
            raise ValueError(f"rollout.placement={self.placement!r}: must be one of {PLACEMENTS}")
        for name in ("generation_ranks", "max_staleness"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"rollout.{name}={value!r}: must be an integer >= 0")
        if self.placement == "colocated":
            if self.generation_ranks:
                raise ValueError(
                    f"rollout.generation_ranks={self.generation_ranks} with rollout.placement=colocated: colocated "
                    "ranks both train and generate; set rollout.placement=disaggregated or generation_ranks=0"
                )
            if self.max_staleness:
                raise ValueError(
                    f"rollout.max_staleness={self.max_staleness} with rollout.placement=colocated: colocated "
                    "generation waits for each update (synchronous); set rollout.placement=disaggregated or "
                    "max_staleness=0"
                )
        elif self.generation_ranks < 1:
            raise ValueError(
                "rollout.placement=disaggregated with rollout.generation_ranks=0: name how many ranks generate "
                "(an integer >= 1, fewer than the world size)"
            )

    def check_placement(self, world_size: int) -> int:
        """The ranks that train out of ``world_size``, refusing up front what does not run:
        disaggregated generation runs the static engine or vLLM, each generation rank one
        engine of its own."""
        if self.placement == "colocated":
            return world_size
        if self.generation_ranks >= world_size:
            raise ValueError(
                f"rollout.generation_ranks={self.generation_ranks} leaves no training rank of the world size "
                f"{world_size}; allowed: 1 to {world_size - 1}"
            )
        if self.generation.backend not in _DISAGGREGATED_BACKENDS:
            raise ValueError(
                f"rollout.generation.backend={self.generation.backend!r} cannot run on a generation rank; "
                f"allowed with rollout.placement=disaggregated: {', '.join(_DISAGGREGATED_BACKENDS)}"
            )
        return world_size - self.generation_ranks

    def check_trainable(self) -> None:
        """Refuse sampling settings under which the trainer's log-probs are not the behaviour
        policy's. The losses compute pi_old over the whole vocabulary at the temperature; a
        truncated sampler (top-p / top-k) draws from another distribution, and its tokens would
        be weighted as if they came from this one (off-policy with no sign of it)."""
        g = self.generation
        if not g.temperature > 0:
            raise ValueError(
                f"rollout.generation.temperature={g.temperature!r}: training rollouts must sample (> 0; "
                "GRPO's siblings of a greedy policy are all the same); greedy is for validation "
                "(rollout.validation.temperature=0)"
            )
        if g.top_p != 1.0 or g.top_k != 0:
            raise ValueError(
                f"rollout.generation.top_p={g.top_p!r}, rollout.generation.top_k={g.top_k!r}: training rollouts "
                "sample the full tempered softmax (the losses' pi_old); allowed: top_p=1.0, top_k=0. "
                "Truncated sampling is for validation: rollout.validation.top_p / rollout.validation.top_k"
            )

    def generation_config(self, *, validation: bool = False) -> GenerationConfig:
        """The sampling settings of training (or validation) rollouts."""
        if not validation:
            return self.generation
        v = self.validation
        return dataclasses.replace(self.generation, temperature=v.temperature, top_p=v.top_p, top_k=v.top_k)
