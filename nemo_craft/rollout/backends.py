"""Generation backends: what one must do (``GenerationBackend``) and which exist (one name -> class
table). ``Generator`` builds the one that ``GenerationConfig.backend`` names; the trainer, the
evaluator and the planner ask the class, never the name.

    register_backend("echo", "my_package.echo:EchoBackend")   # then rollout.generation.backend=echo
    backend_names()                                           # ("auto", "static", "dynamic", "vllm", "echo")

The table holds "module:Class" strings and this module imports nothing of a backend (no megatron
inference engine, no vLLM): listing the names is free, and a class is imported the first time it is
asked for (``backend_class``). Adding a backend: docs/extending.md#generation-backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import torch

    from nemo_craft.rollout.config import GenerationConfig
    from nemo_craft.rollout.dynamic_backend import DynamicCapability
    from nemo_craft.rollout.stopping import StopCriteria

__all__ = [
    "BACKENDS",
    "GENERATION_BACKENDS",
    "GenerationBackend",
    "backend_class",
    "backend_names",
    "check_run",
    "planned_backend",
    "register_backend",
    "resolve_backend",
]

GENERATION_BACKENDS: dict[str, str] = {
    "static": "nemo_craft.rollout.static_backend:StaticBackend",
    "dynamic": "nemo_craft.rollout.dynamic_backend:DynamicBackend",
    "vllm": "nemo_craft.rollout.vllm_backend:VllmBackend",
}
"""Backend name -> "module:Class"; ``register_backend`` adds to it."""


class GenerationBackend(Protocol):
    """What ``Generator`` and the trainer use of a backend. One instance per rank, built by ``build``;
    every rank of a model-parallel group calls ``generate`` with the same arguments and must get the
    same results."""

    holds_weight_copy: ClassVar[bool]
    """It keeps its own copy of the weights (refit after each update), besides the training model's
    (the planner counts it: ``generation_weights_copy``)."""
    paged_kv_cache: ClassVar[bool]
    """It allocates ``kv_cache_gb`` of paged KV cache per rank (the planner counts it)."""
    auto_preference: ClassVar[int | None]
    """``backend=auto`` takes, of the backends with a preference, the highest one that can run here
    (``problem`` is None); None: auto never takes it."""
    max_sequence_length: int
    """Prompt + generated tokens of one row, at most (``Generator`` checks requests against it)."""

    @classmethod
    def problem(cls, capability: Callable[[], DynamicCapability]) -> str | None:
        """Why it cannot run on this machine with this model, or None. ``capability()`` probes
        the machine and the model (CUDA, flash-attn, params dtype): call it only if needed."""

    @classmethod
    def check_run(cls, parallel_cfg, model_cfg) -> None:
        """Refuse, at start-up (before any process group), a run it cannot serve: a ValueError
        naming the setting and what is allowed."""

    @classmethod
    def build(
        cls, model_chunks: list, config: GenerationConfig, *, vocab_size: int, max_sequence_length: int, model_cfg
    ) -> GenerationBackend:
        """The backend of this rank's ``model_chunks`` for ``config`` (its limits: batch, KV cache,
        CUDA graphs); ``model_cfg`` is the policy's ``ModelConfig`` or None."""

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
        """``(token_ids, logprobs, finish_reason)`` per prompt, in order. Each budget is >= 1 and
        fits ``max_sequence_length`` (``Generator`` checks); ``stop`` decides where a row ends
        (stop ids, stop strings, its budget); random draws come from ``generator`` only."""

    def weights_changed(self) -> None:
        """The chunks' parameters changed: a backend with its own copy refits before it next generates."""

    def release_memory(self) -> None:
        """Generation is over until the next rollout: lend memory back to training if it can."""

    def read_stats(self) -> dict[str, float]:
        """Its counters since the last call (logged as they are), e.g. prefix-cache hits."""


_CLASS_MEMBERS = (
    "holds_weight_copy",
    "paged_kv_cache",
    "auto_preference",
    "problem",
    "check_run",
    "build",
    "generate",
    "weights_changed",
    "release_memory",
    "read_stats",
)


def backend_names() -> tuple[str, ...]:
    """The values ``backend`` may take: "auto" and every registered backend."""
    return ("auto", *GENERATION_BACKENDS)


class _LiveNames(Sequence[str]):
    """``backend_names()`` at each use, so that ``name in BACKENDS`` sees later registrations."""

    def __getitem__(self, index):
        return backend_names()[index]

    def __len__(self) -> int:
        return len(backend_names())

    def __repr__(self) -> str:
        return repr(backend_names())


BACKENDS: Sequence[str] = _LiveNames()


def register_backend(name: str, cls_path: str) -> None:
    """Make ``backend=name`` build the class at ``cls_path`` ("package.module:Class"), which must
    have every member of ``GenerationBackend`` (checked when it is first built)."""
    if not isinstance(name, str) or not name.isidentifier() or name == "auto":
        raise ValueError(f"backend name must be an identifier other than 'auto', got {name!r}")
    module, _, attr = cls_path.partition(":") if isinstance(cls_path, str) else ("", "", "")
    if not module or not attr:
        raise ValueError(f"backend {name!r}: cls_path must be 'package.module:Class', got {cls_path!r}")
    if GENERATION_BACKENDS.get(name, cls_path) != cls_path:
        raise ValueError(f"backend {name!r} is already registered as {GENERATION_BACKENDS[name]!r}")
    GENERATION_BACKENDS[name] = cls_path


def backend_class(name: str) -> type[GenerationBackend]:
    """The class registered as ``name`` (imported now), checked against ``GenerationBackend``."""
    if name not in GENERATION_BACKENDS:
        raise ValueError(f"backend must be one of {backend_names()[1:]} (or auto), got {name!r}")
    module, _, attr = GENERATION_BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    missing = [m for m in _CLASS_MEMBERS if not hasattr(cls, m)]
    if missing:
        raise TypeError(
            f"backend {name!r} ({GENERATION_BACKENDS[name]}) lacks {', '.join(missing)} of GenerationBackend "
            "(docs/extending.md#generation-backend)"
        )
    return cls


def resolve_backend(requested: str, capability: Callable[[], DynamicCapability]) -> str:
    """The backend that runs for ``backend=requested``.

    A name runs as itself, unless its class names a ``problem`` here (a ValueError naming it and
    the alternatives). "auto" takes the backend of highest ``auto_preference`` without a problem:
    dynamic where CUDA, flash-attn and a bf16 / fp16 model are there, else static. ``capability``
    gives the facts (``DynamicCapability.probe``), read only by a backend that needs them."""
    if requested not in backend_names():
        raise ValueError(f"backend must be one of {backend_names()}, got {requested!r}")
    if requested != "auto":
        problem = backend_class(requested).problem(capability)
        if problem is not None:
            raise ValueError(
                f"rollout.generation.backend={requested} cannot run here: {problem}. "
                f"Use rollout.generation.backend={_auto_order()[-1]}, or auto (the first of {', '.join(_auto_order())} "
                "that can run here)"
            )
        return requested
    for name in _auto_order():
        if backend_class(name).problem(capability) is None:
            return name
    raise ValueError(f"backend=auto: none of {_auto_order()} can run here; name a backend")


def _auto_order() -> list[str]:
    """The backends auto may take, most preferred first."""
    ranked = [(backend_class(n).auto_preference, n) for n in GENERATION_BACKENDS]
    return [n for pref, n in sorted((r for r in ranked if r[0] is not None), key=lambda r: -r[0])]


def check_run(name: str, parallel_cfg, model_cfg) -> None:
    """The start-up refusals of backend ``name`` for this layout and model (nothing for "auto": it
    takes a backend only where that can run, and the backend's own build checks the rest)."""
    if name != "auto":
        backend_class(name).check_run(parallel_cfg, model_cfg)


def planned_backend(name: str, params_dtype: str) -> type[GenerationBackend]:
    """The backend class that ``backend=name`` runs on a GPU node with flash-attn (what the planner
    plans for): "auto" resolves by the model's ``params_dtype`` ("fp32", "bf16", "fp16") alone."""
    if name != "auto":
        return backend_class(name)
    import torch

    from nemo_craft.rollout.dynamic_backend import MIN_FLASH_ATTN, DynamicCapability  # lazy: imports megatron

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(params_dtype)
    facts = DynamicCapability(cuda=True, flash_attn=MIN_FLASH_ATTN, flash_attn_3=False, params_dtype=dtype)
    return backend_class(resolve_backend("auto", lambda: facts))
