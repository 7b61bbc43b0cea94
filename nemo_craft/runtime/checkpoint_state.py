"""What a checkpoint holds besides files: the sharded state dicts handed to megatron's
``dist_checkpointing`` and the random-number-generator states of a rank.

Model keys follow Megatron-LM: ``"model"`` for a single chunk, ``"model0"``, ``"model1"``, ...
with virtual pipeline (each chunk's ``sharded_state_dict`` places its layers by its
``vp_stage``), so a checkpoint loads at any TP / PP / VPP layout. Chunks are unwrapped from
DDP / Float16Module first (as Megatron-LM does), so the keys are the bare model's and a
checkpoint loads into wrapped and unwrapped chunks alike. The optimizer's part is built
from the whole model dict (it finds its parameters' shards there by identity).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "SHARDED_STATE_METADATA",
    "model_state_key",
    "build_sharded_state_dict",
    "load_into",
    "capture_rng_state",
    "restore_rng_state",
]

SHARDED_STATE_METADATA: dict[str, Any] = {
    # The distributed optimizer's "fully_reshardable" format: the only one of megatron-core
    # 0.16.1 that changes TP as well as DP ("fully_sharded_model_space" fails on save,
    # "dp_reshardable" changes DP only). Its resume needs parallel/megatron_fixes.py (bug 3).
    "distrib_optim_sharding_type": "fully_reshardable",
    # ChainedOptimizer (several param groups / buffers): no "chained_<i>." key prefix.
    "chained_optim_avoid_prefix": True,
    "singleton_local_shards": False,
}
"""Written into the checkpoint (``content_metadata``) and read back on load, so a checkpoint
is always loaded with the format it was saved with."""


def model_state_key(chunk_index: int, num_chunks: int) -> str:
    return "model" if num_chunks == 1 else f"model{chunk_index}"


def build_sharded_state_dict(
    model_chunks: Sequence[torch.nn.Module], optimizer: Optional[Any], metadata: dict, *, is_loading: bool
) -> dict:
    """``{"model" | "model<i>": chunk sharded state, "optimizer": ...}`` for dist_checkpointing.

    ``metadata`` is copied per call: megatron adds process groups to the dict it is given,
    which must not reach the checkpoint's content metadata.
    """
    from megatron.core.utils import unwrap_model

    state: dict[str, Any] = {}
    model_chunks = unwrap_model(list(model_chunks))
    for i, chunk in enumerate(model_chunks):
        state[model_state_key(i, len(model_chunks))] = chunk.sharded_state_dict(metadata=dict(metadata))
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading, metadata=dict(metadata))
    return state


def load_into(loaded: dict, model_chunks: Sequence[torch.nn.Module], optimizer: Optional[Any]) -> None:
    """Copy a loaded state dict into the chunks (strictly) and the optimizer."""
    from megatron.core.utils import unwrap_model

    model_chunks = unwrap_model(list(model_chunks))
    for i, chunk in enumerate(model_chunks):
        chunk.load_state_dict(loaded[model_state_key(i, len(model_chunks))], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])


def capture_rng_state() -> dict:
    """Every generator a training step draws from on this rank: Python's, NumPy's, torch's CPU
    generator, each CUDA device's (when CUDA is present) and megatron's tensor-parallel RNG
    tracker (its named states: the per-TP-rank dropout streams)."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        # a tensor, not an ndarray: the file then loads with torch.load(weights_only=True)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "megatron_tracker": {name: state.clone() for name, state in get_cuda_rng_tracker().get_states().items()},
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are set only where CUDA is present."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # an ndarray in older checkpoints
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    get_cuda_rng_tracker().set_states(dict(state["megatron_tracker"]))
