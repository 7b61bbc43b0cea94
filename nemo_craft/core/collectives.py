"""Object collectives over the default process group, shared by the trainer and the checkpoints.

A step that one rank cannot take must not leave the others waiting in the next collective: each
helper here either agrees on a flag over every rank or runs a function on rank 0 and hands its
result (or its exception) to all of them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_ranks", "any_rank", "broadcast_from_rank0", "on_rank0", "on_rank0_errors", "gather_errors"]


def all_ranks(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` holds on every rank (one all-reduce of a tensor on ``device``)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.item() == 1.0


def any_rank(flag: bool) -> bool:
    """True when ``flag`` holds on some rank (an object gather: works before any device is set)."""
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return any(flags)


def broadcast_from_rank0(value):
    """Rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn):
    """Run ``fn`` on rank 0 only and return its result on every rank; an exception it raises
    is raised on every rank (the same exception: the rest would otherwise wait forever)."""
    result, error = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            error = err
    result, error = broadcast_from_rank0((result, error))
    if error is not None:
        raise error
    return result


def on_rank0_errors(fn) -> list:
    """Run ``fn`` on rank 0; every rank gets ``[error text or None]`` (a collective)."""
    error = None
    if dist.get_rank() == 0:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - reported on every rank by the caller
            error = f"rank 0: {err!r}"
    return [broadcast_from_rank0(error)]


def gather_errors(fn) -> list:
    """Run ``fn`` on every rank; every rank gets each rank's ``error text or None``."""
    error = None
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - reported on every rank by the caller
        error = f"rank {dist.get_rank()}: {err!r}"
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return errors
