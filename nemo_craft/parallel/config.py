"""The parallel layout of a run: one dataclass, validated at start-up."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, Optional

__all__ = ["ParallelConfig", "OptimConfig"]

Backend = Literal["auto", "nccl", "gloo"]
RecomputeGranularity = Literal["selective", "full"]
RecomputeMethod = Literal["uniform", "block"]
_BACKENDS = typing.get_args(Backend)
_RECOMPUTE_GRANULARITY = (None, *typing.get_args(RecomputeGranularity))
_RECOMPUTE_METHODS = typing.get_args(RecomputeMethod)


@dataclass
class ParallelConfig:
    """How the model and the batch are split over ranks.

    The data-parallel size is what is left of the world size:
    ``dp = world_size / (tp * pp * cp)``.
    """

    tensor_model_parallel_size: int = 1
    """TP: ranks that split each weight matrix (and the vocabulary of the logits)."""
    pipeline_model_parallel_size: int = 1
    """PP: ranks that split the layers into consecutive stages."""
    virtual_pipeline_model_parallel_size: Optional[int] = None
    """VPP: model chunks per pipeline rank (interleaved 1F1B schedule); None for off."""
    context_parallel_size: int = 1
    """CP: ranks that split every sequence (megatron's load-balanced chunks: rank r holds chunks r
    and 2 CP - 1 - r of 2 CP); attention gathers keys and values over them. For sequences whose
    activations do not fit one rank's memory even with TP + sequence parallel and recompute;
    sequences are padded to a multiple of 2 CP. Generation runs each rank on whole sequences."""
    expert_model_parallel_size: int = 1
    """EP: ranks that split the experts of each mixture-of-experts layer (megatron's all-to-all
    token dispatcher sends each token to the ranks of its experts). Carved out of the
    data-parallel ranks: world_size must be a multiple of EP * ETP * PP, and EP must divide
    model.num_experts. Expert gradients reduce over the expert-data-parallel group."""
    expert_tensor_parallel_size: Optional[int] = None
    """ETP: ranks that split each expert's weight matrices; None: the same as TP."""
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations along the sequence over the TP group (needs TP > 1)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer states (and the fp32 main params) over the data-parallel group."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduce-scatter/all-reduce with the backward pass."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the next forward."""
    backend: Backend = "auto"
    """torch.distributed backend: "auto" is NCCL on CUDA and gloo without it."""
    distributed_timeout_minutes: int = 30
    """Collective timeout; a hung rank fails the job after this long instead of hanging it."""
    recompute_granularity: Optional[RecomputeGranularity] = None
    """Activation recomputation in the training backward: None (keep every activation),
    "selective" (recompute core attention: drops the s x s scores of unfused attention) or
    "full" (keep only each recomputed layer's input; about a third more compute)."""
    recompute_method: RecomputeMethod = "uniform"
    """With "full": "uniform" recomputes every layer in groups of ``recompute_num_layers``;
    "block" recomputes only the first ``recompute_num_layers`` layers of each pipeline chunk."""
    recompute_num_layers: int = 1
    """With "full": layers per recomputed group ("uniform") or recomputed layers per chunk ("block")."""

    def __post_init__(self) -> None:
        for name in (
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "context_parallel_size",
            "expert_model_parallel_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"parallel.{name}={value!r}: must be an integer >= 1")
        etp = self.expert_tensor_parallel_size
        if etp is not None and (not isinstance(etp, int) or isinstance(etp, bool) or etp < 1):
            raise ValueError(f"parallel.expert_tensor_parallel_size={etp!r}: must be null (as TP) or an integer >= 1")
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None:
            if not isinstance(vpp, int) or vpp < 1:
                raise ValueError(f"parallel.virtual_pipeline_model_parallel_size={vpp!r}: must be None or >= 1")
            if vpp > 1 and self.pipeline_model_parallel_size < 2:
                raise ValueError(
                    f"parallel.virtual_pipeline_model_parallel_size={vpp} needs "
                    f"pipeline_model_parallel_size >= 2 (got {self.pipeline_model_parallel_size}); "
                    "set it to null for a non-pipelined run"
                )
            if vpp == 1:
                self.virtual_pipeline_model_parallel_size = None
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ValueError(
                "parallel.sequence_parallel=true needs tensor_model_parallel_size > 1; "
                "set sequence_parallel=false for TP=1"
            )
        if self.backend not in _BACKENDS:
            raise ValueError(f"parallel.backend={self.backend!r}: allowed values are {_BACKENDS}")
        if self.recompute_granularity not in _RECOMPUTE_GRANULARITY:
            raise ValueError(
                f"parallel.recompute_granularity={self.recompute_granularity!r}: allowed values are "
                f"{_RECOMPUTE_GRANULARITY}"
            )
        if self.recompute_method not in _RECOMPUTE_METHODS:
            raise ValueError(
                f"parallel.recompute_method={self.recompute_method!r}: allowed values are {_RECOMPUTE_METHODS}"
            )
        if not isinstance(self.recompute_num_layers, int) or self.recompute_num_layers < 1:
            raise ValueError(f"parallel.recompute_num_layers={self.recompute_num_layers!r}: must be an integer >= 1")
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ValueError("parallel.overlap_param_gather=true needs use_distributed_optimizer=true")

    def generation_problem(self) -> Optional[str]:
        """Why rollouts cannot run on this layout (None when they can). megatron's inference
        engines take one model chunk per rank, so virtual pipeline stages cannot generate; the
        RL trainer and the evaluator generate, so they refuse such a layout before any process
        group exists."""
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None and vpp > 1:
            return (
                f"parallel.virtual_pipeline_model_parallel_size={vpp}: rollouts run megatron's inference engines, "
                "which take one model chunk per rank; allowed: null (plain 1F1B pipeline, e.g. parallel=tp8_pp4)"
            )
        return None

    def check_generation(self) -> None:
        """Raise :meth:`generation_problem` as a ValueError, if there is one."""
        problem = self.generation_problem()
        if problem:
            raise ValueError(problem)

    def recompute_kwargs(self) -> dict:
        """The TransformerConfig fields of the recompute settings (empty when off)."""
        if self.recompute_granularity is None:
            return {}
        if self.recompute_granularity == "selective":
            return {"recompute_granularity": "selective"}
        return {
            "recompute_granularity": "full",
            "recompute_method": self.recompute_method,
            "recompute_num_layers": self.recompute_num_layers,
        }

    @property
    def sequence_multiple(self) -> int:
        """What a step's padded sequence length must be a multiple of: 2 CP (the load-balanced
        chunks) and CP x TP under sequence parallel (each rank's tokens split over TP); 1 plain."""
        from nemo_craft.parallel.context_parallel import sequence_multiple  # lazy: imports megatron

        return sequence_multiple(self.context_parallel_size, self.tensor_model_parallel_size, self.sequence_parallel)

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size

    def data_parallel_size(self, world_size: int) -> int:
        """DP for ``world_size`` ranks; a clear error when the layout does not divide it."""
        mp = self.model_parallel_size
        if world_size % mp != 0:
            raise ValueError(
                f"world size {world_size} is not divisible by TP*PP*CP = "
                f"{self.tensor_model_parallel_size}*{self.pipeline_model_parallel_size}*"
                f"{self.context_parallel_size} = {mp}; choose a layout whose product divides "
                f"the number of ranks"
            )
        self.check_expert_ranks(world_size)
        return world_size // mp

    @property
    def expert_tensor_size(self) -> int:
        """ETP as megatron uses it (TP when unset)."""
        return self.expert_tensor_parallel_size or self.tensor_model_parallel_size

    def check_expert_ranks(self, world_size: int) -> None:
        """The expert layout must tile the ranks: megatron lays EP x ETP x PP over the world, the
        rest being the expert-data-parallel group."""
        ep, etp, pp = self.expert_model_parallel_size, self.expert_tensor_size, self.pipeline_model_parallel_size
        if ep == 1 and etp == self.tensor_model_parallel_size:
            return
        if world_size % (ep * etp * pp) != 0:
            raise ValueError(
                f"world size {world_size} is not divisible by EP*ETP*PP = {ep}*{etp}*{pp} = {ep * etp * pp}; "
                "choose parallel.expert_model_parallel_size (and expert_tensor_parallel_size) whose product "
                "with PP divides the number of ranks"
            )


LrDecayStyle = Literal["constant", "linear", "cosine"]


@dataclass
class OptimConfig:
    """The ``trainer.optim:`` section: Adam with decoupled weight decay, gradient clipping and
    megatron's lr schedule (``nemo_craft.parallel.ddp.build_optimizer`` builds them)."""

    lr: float = 1e-6
    """Peak learning rate of RL (the paper's, for pretrained models; the CPU demo sets its own)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the decay; a peak below it (a warm start's) is its own floor."""
    lr_warmup_steps: int = 0
    lr_decay_style: LrDecayStyle = "cosine"
    """"constant", "linear" or "cosine" (megatron's OptimizerParamScheduler)."""
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip (over all ranks); 0 disables it."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"trainer.optim.lr={self.lr!r}: must be > 0")
        if not self.min_lr >= 0:
            raise ValueError(f"trainer.optim.min_lr={self.min_lr!r}: must be >= 0")
        if self.lr_decay_style not in typing.get_args(LrDecayStyle):
            raise ValueError(
                f"trainer.optim.lr_decay_style={self.lr_decay_style!r}: allowed values are "
                f"{typing.get_args(LrDecayStyle)}"
            )
        if self.clip_grad < 0:
            raise ValueError(f"trainer.optim.clip_grad={self.clip_grad!r}: must be >= 0 (0 disables clipping)")
        if not (isinstance(self.lr_warmup_steps, int) and self.lr_warmup_steps >= 0):
            raise ValueError(f"trainer.optim.lr_warmup_steps={self.lr_warmup_steps!r}: must be an integer >= 0")
