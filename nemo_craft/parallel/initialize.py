"""Process-group and megatron parallel-state set-up for a rank, on GPUs or on the CPU."""

from __future__ import annotations

import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.parallel.cpu_mode import maybe_enable_cpu_mode
from nemo_craft.parallel.mcore_compat import require_supported

__all__ = ["initialize_parallel", "destroy_parallel", "resolve_backend", "set_seed"]


def resolve_backend(backend: str) -> str:
    """ "auto" -> NCCL on CUDA, gloo without it. NCCL without CUDA is an error."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("parallel.backend='nccl' but CUDA is not available; use 'auto' or 'gloo'")
    return backend


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, torch and megatron's per-TP-rank RNG tracker."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if parallel_state.model_parallel_is_initialized():
        model_parallel_cuda_manual_seed(seed)


def initialize_parallel(cfg: ParallelConfig, seed: int = 1234, init_method: str | None = None) -> int:
    """Initialise torch.distributed (from the torchrun/SLURM environment unless
    ``init_method`` is given) and megatron's parallel state. Returns the DP size.

    Refuses a megatron-core outside ``mcore_compat.SUPPORTED`` first. Enters the CPU mode when
    CUDA is absent (see ``cpu_mode``); on CUDA binds the rank to ``LOCAL_RANK``'s GPU and uses
    NCCL.
    """
    from megatron.core import parallel_state

    require_supported()  # an unsupported megatron-core stops here, before any process group
    maybe_enable_cpu_mode()
    backend = resolve_backend(cfg.backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            rank=int(os.environ["RANK"]) if init_method else -1,
            world_size=int(os.environ["WORLD_SIZE"]) if init_method else -1,
            timeout=datetime.timedelta(minutes=cfg.distributed_timeout_minutes),
        )
    dp = cfg.data_parallel_size(dist.get_world_size())
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=cfg.tensor_model_parallel_size,
            pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=cfg.virtual_pipeline_model_parallel_size,
            context_parallel_size=cfg.context_parallel_size,
            expert_model_parallel_size=cfg.expert_model_parallel_size,
            expert_tensor_parallel_size=cfg.expert_tensor_parallel_size,
            distributed_timeout_minutes=cfg.distributed_timeout_minutes,
        )
    set_seed(seed)
    return dp


def destroy_parallel() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
