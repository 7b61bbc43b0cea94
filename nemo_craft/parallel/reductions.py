"""Reductions of named statistics over a process group: one collective for a dict of scalars.

    totals = reduce_named({"reward": r_sum, "episodes": n}, dp_group, device=device)
    mean = totals["reward"] / totals["episodes"]

The values travel packed in one float64 vector (sorted by name, so every rank packs the same
order whatever order it built its dict in); callers read them back by name, never by position.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

import torch
import torch.distributed as dist

from nemo_craft.parallel.sibling_stats import group_size

__all__ = ["reduce_named"]

Scalar = Union[float, int, bool, torch.Tensor]
_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def reduce_named(
    values: Mapping[str, Scalar],
    group: Optional[dist.ProcessGroup],
    *,
    op: str = "sum",
    device: Optional[torch.device] = None,
) -> dict[str, float]:
    """``op`` ("sum", "max" or "min") of each named scalar over ``group`` (None: no collective,
    the values as floats). Every rank must pass the same names. ``device``: where the packed
    vector lives (the group's backend needs CUDA tensors for NCCL); default the CPU."""
    if op not in _OPS:
        raise ValueError(f"reduce_named: op={op!r}; allowed: {sorted(_OPS)}")
    names = sorted(values)
    if not names:
        return {}
    packed = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=device).reshape(()) for k in names])
    if group_size(group) > 1:
        dist.all_reduce(packed, op=_OPS[op], group=group)
    return dict(zip(names, packed.tolist()))
