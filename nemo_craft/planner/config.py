"""The ``cluster:`` and ``plan:`` sections: what the planner reads besides the model and the layout.

The memory of an RL step depends on the sequence lengths, the batch and a few execution
choices. Those the training config already holds are read from it (``rollout``, ``trainer``,
``loss``); the rest live under an optional ``plan:`` section (recipes set it; on the command
line ``plan.seq_length=16384`` works like any other override). Every field is printed with the
plan, so a figure never rests on a hidden assumption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from nemo_craft.losses.config import LossConfig
from nemo_craft.rollout.backends import planned_backend

__all__ = ["ClusterConfig", "Workload", "RECOMPUTE", "ATTENTION"]

RECOMPUTE = ("none", "selective", "full")
ATTENTION = ("flash", "unfused")


@dataclass
class ClusterConfig:
    """The machines of a run (config group ``cluster``)."""

    nodes: int = 1
    """Nodes of the job (SLURM ``--nodes``)."""
    gpus_per_node: int = 8
    """GPUs (ranks) per node (``--gpus-per-node``, torchrun ``--nproc-per-node``)."""
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GiB (H100 80GB: 80; H200: 141)."""

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"cluster.{name}={value!r}: must be an integer >= 1")
        if not isinstance(self.gpu_memory_gb, (int, float)) or self.gpu_memory_gb <= 0:
            raise ValueError(f"cluster.gpu_memory_gb={self.gpu_memory_gb!r}: must be a number > 0")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Workload:
    """Sequence lengths, batch and execution choices of one RL step, as the planner sees them."""

    seq_length: int = 4096
    """Tokens of one trajectory (prompt + observations + actions): the trainer pads a step's
    sequences to its longest, so the planner takes the longest allowed,
    ``rollout.generation.max_sequence_length``, or the model's ``max_position_embeddings`` when that is unset."""
    privileged_tokens: int = 512
    """Extra tokens of the teacher's privileged context (the teacher pass reads
    ``seq_length + privileged_tokens``)."""
    trajectories_per_step: int = 128
    """N tasks x G siblings (from ``rollout.tasks_per_step * rollout.group_size``)."""
    micro_batch_size: int = 1
    """Trajectories per training micro-batch (``trainer.micro_batch_size``)."""
    forward_micro_batch_size: Optional[int] = None
    """Trajectories per micro-batch of the no-grad passes (old, teacher, reference); None: as training."""
    generation_batch: Optional[int] = None
    """Rows of one generation forward pass (``rollout.generation.max_batch_size``), capped by the rank's
    share of the trajectories; None: the whole share. Sets the KV cache."""
    generation_kv_gb: Optional[float] = None
    """Generation on megatron's dynamic engine: its paged KV cache, GiB per rank
    (``rollout.generation.kv_cache_gb``; set when ``rollout.generation.backend`` is dynamic, or auto with a bf16 / fp16
    model, which is what auto picks on GPUs with flash-attn). None: the static cache,
    ``generation_batch`` rows of ``seq_length`` tokens."""
    generation_weights_copy: bool = False
    """Generation on a vLLM engine colocated with training (``rollout.generation.backend=vllm``): while it
    generates, the engine holds its own copy of the rank's weights beside its KV cache
    (``generation_kv_gb``); both are released during training (vLLM's sleep mode)."""
    generation_gpus: int = 0
    """GPUs that only generate (``rollout.generation_ranks`` under ``rollout.placement=disaggregated``);
    0: the training ranks generate. The layout trains on the others, which then hold no KV cache."""
    generation_tp: int = 1
    """GPUs of one generation engine: 1 is what a disaggregated run builds (each generation rank
    one engine); larger plans engines that span GPUs. ``generation_gpus`` is a multiple of it."""
    logits_chunk_tokens: int = LossConfig.chunk_size
    """Tokens per chunk of the vocabulary-parallel loss (``loss.chunk_size``; its default)."""
    recompute: str = "none"
    """Activation recomputation: "none", "selective" (core attention) or "full" (every layer,
    one layer per group); read from ``parallel.recompute_granularity``."""
    attention: str = "flash"
    """"flash" (no s x s scores kept: TE's fused/flash attention, or the local spec's default
    ``model.core_attention=sdpa`` on GPUs) or "unfused" (scores kept: ``model.core_attention=local``
    without Transformer Engine)."""
    grad_reduce_in_fp32: bool = True
    """Gradient buffers in fp32 (what ``nemo_craft.parallel.ddp.wrap_ddp`` sets)."""
    reference_on_gpu: bool = False
    """The frozen reference policy keeps a second copy of the weights on the GPU. The trainer
    keeps it in host memory and swaps it in for the reference pass (``runtime/reference.py``),
    so this is false unless that changes."""
    overhead_gb: float = 4.0
    """CUDA context, NCCL buffers and allocator fragmentation, GiB per GPU."""

    def __post_init__(self) -> None:
        for name in ("seq_length", "trajectories_per_step", "micro_batch_size", "logits_chunk_tokens"):
            _positive_int(name, getattr(self, name))
        if (
            isinstance(self.privileged_tokens, bool)
            or not isinstance(self.privileged_tokens, int)
            or self.privileged_tokens < 0
        ):
            raise ValueError(f"plan.privileged_tokens={self.privileged_tokens!r}: must be an integer >= 0")
        for name in ("forward_micro_batch_size", "generation_batch"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        gpus = self.generation_gpus
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
            raise ValueError(f"plan.generation_gpus={self.generation_gpus!r}: must be an integer >= 0")
        _positive_int("generation_tp", self.generation_tp)
        if self.generation_gpus % self.generation_tp:
            raise ValueError(
                f"plan.generation_gpus={self.generation_gpus} is not a multiple of plan.generation_tp="
                f"{self.generation_tp}: each engine takes generation_tp GPUs"
            )
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"plan.recompute={self.recompute!r}: allowed values are {RECOMPUTE}")
        if self.attention not in ATTENTION:
            raise ValueError(f"plan.attention={self.attention!r}: allowed values are {ATTENTION}")
        if self.overhead_gb < 0:
            raise ValueError(f"plan.overhead_gb={self.overhead_gb!r}: must be >= 0")

    @classmethod
    def from_sections(cls, *, model, rollout, trainer, parallel, loss, overrides: Mapping[str, Any] = ()) -> Workload:
        """The workload of the typed run sections (``rollout``, ``trainer``, ``parallel`` and
        ``loss`` for what training sets), with the ``plan:`` section's ``overrides`` on top."""
        gen = rollout.generation
        values: dict[str, Any] = {
            "seq_length": gen.max_sequence_length or model.max_position_embeddings,
            "trajectories_per_step": rollout.tasks_per_step * rollout.group_size,
            "generation_batch": gen.max_batch_size,
            "micro_batch_size": trainer.micro_batch_size,
            "logits_chunk_tokens": loss.chunk_size,
        }
        name = gen.backend
        if rollout.placement == "disaggregated":
            values["generation_gpus"] = rollout.generation_ranks
            name = "vllm" if name == "auto" else name  # a generation rank's auto: vLLM on a GPU node
        backend = planned_backend(name, model.params_dtype)  # the class that runs on a GPU node
        if backend.paged_kv_cache:
            values["generation_kv_gb"] = float(gen.kv_cache_gb)
        # a generation rank's engine holds only its own weights: no second copy beside training's
        values["generation_weights_copy"] = backend.holds_weight_copy and not values.get("generation_gpus")
        if parallel.recompute_granularity is not None:
            values["recompute"] = str(parallel.recompute_granularity)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config section 'plan'; allowed: {sorted(names)}")
        values.update(overrides)
        return cls(**values)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"plan.{name}={value!r}: must be an integer >= 1")
