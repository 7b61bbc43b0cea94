"""Context parallel (CP): every sequence split over the CP group, megatron's load-balanced way.

A sequence of S tokens (S a multiple of 2 * cp) is cut into 2 * cp chunks of n = S / (2 cp);
CP rank r holds chunks r and 2 cp - 1 - r, so that under a causal mask every rank attends to
about as many keys (``megatron.core.utils.get_batch_on_this_cp_rank``; megatron's RoPE slices
its table the same way, ``get_pos_emb_on_this_cp_rank``).

    mb_local = split_micro_batch(mb)             # [b, S] tensors -> [b, S / cp], + "cp_columns"
    values_BS = gather_sequence(values_local, dim=1)   # a no-grad pass's values back to [b, S]
    key_S = gather_sequence(key_local, dim=0)    # autograd: all-gather / reduce-scatter
    with context_parallel_off(model): ...        # generation: the whole sequence on each rank

Everything here is a no-op at CP 1 (the tensors themselves are returned).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.distributed as dist

__all__ = [
    "cp_group_and_rank",
    "local_columns",
    "split_micro_batch",
    "gather_sequence",
    "context_parallel_off",
    "sequence_multiple",
    "check_same_over_cp",
]


def cp_group_and_rank() -> tuple[Optional[dist.ProcessGroup], int, int]:
    """``(group, size, rank)`` of megatron's CP group; ``(None, 1, 0)`` without one."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized() or ps.get_context_parallel_world_size() == 1:
        return None, 1, 0
    return ps.get_context_parallel_group(), ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()


def sequence_multiple(cp: int, tp: int = 1, sequence_parallel: bool = False) -> int:
    """What every sequence length of a step must divide by: 2 * cp for the load-balanced chunks
    (CP > 1), and the rank's S / cp tokens by TP under sequence parallel."""
    multiple = 2 * cp if cp > 1 else 1
    if sequence_parallel:
        multiple = _lcm(multiple, cp * tp)
    return multiple


def _lcm(a: int, b: int) -> int:
    import math

    return a * b // math.gcd(a, b)


def local_columns(seq_len: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """[S / cp] long: the global positions of CP rank ``rank``'s tokens (chunks r, 2 cp - 1 - r)."""
    if seq_len % (2 * cp):
        raise ValueError(
            f"a sequence of {seq_len} tokens does not split into 2 * context_parallel_size = {2 * cp} "
            "chunks; pad the step's sequences to a multiple of it"
        )
    n = seq_len // (2 * cp)
    first, second = rank * n, (2 * cp - 1 - rank) * n
    return torch.cat([torch.arange(first, first + n), torch.arange(second, second + n)]).to(device)


def split_micro_batch(mb: dict, group=None, cp: Optional[int] = None, rank: Optional[int] = None) -> dict:
    """This CP rank's part of a padded micro-batch: every ``[b, S]`` tensor cut to its
    ``[b, S / cp]`` columns; ``[b]`` tensors and anything else unchanged; ``cp_columns`` added
    (the global positions of the columns, [S / cp]), so that a loss can take the same columns of
    its own per-token tensors (and position-seeded random numbers). The micro-batch itself at CP 1."""
    if cp is None:
        group, cp, rank = cp_group_and_rank()
    if cp == 1:
        return mb
    if "packed_seq_params" in mb:
        raise ValueError(
            "context parallel does not take packed micro-batches (trainer.max_tokens_per_microbatch); "
            "leave packing off with parallel.context_parallel_size > 1"
        )
    b, S = mb["input_ids"].shape
    cols = local_columns(S, cp, rank, device=mb["input_ids"].device)
    out = {}
    for k, v in mb.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == S:
            out[k] = v.index_select(1, cols)
        else:
            out[k] = v
    out["cp_columns"] = cols
    return out


def _rank_to_global_order(cp: int) -> list[int]:
    """The gathered chunk that holds each global chunk: rank k contributes chunks (k, 2cp-1-k)
    as gathered chunks (2k, 2k + 1)."""
    where = [0] * (2 * cp)
    for k in range(cp):
        where[k] = 2 * k
        where[2 * cp - 1 - k] = 2 * k + 1
    return where


class _AllGatherDim0(torch.autograd.Function):
    """All-gather along dim 0 (the ranks' pieces end to end) forward; the gradient
    reduce-scattered back (each rank's piece, summed over the ranks that used it) backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        world = dist.get_world_size(group)
        x = x.contiguous()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        world = dist.get_world_size(ctx.group)
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad, group=ctx.group)
        return out, None


def gather_sequence(x: torch.Tensor, dim: int = 0, group=None) -> torch.Tensor:
    """The whole sequence from every CP rank's ``[..., S / cp, ...]`` piece along ``dim``, in
    global order: ``[..., S, ...]``. Differentiable (the gradient of a piece is the sum over the
    ranks of the gradient at its positions). ``x`` itself at CP 1."""
    if group is None:
        group, cp, _ = cp_group_and_rank()
    else:
        cp = dist.get_world_size(group)
    if cp == 1:
        return x
    moved = x.movedim(dim, 0)
    local = moved.shape[0]
    if local % 2:
        raise ValueError(f"a context-parallel piece of {local} tokens is not two equal chunks")
    gathered = _AllGatherDim0.apply(moved, group)  # [cp * local, ...] in rank order
    chunks = gathered.view(2 * cp, local // 2, *moved.shape[1:])
    order = torch.tensor(_rank_to_global_order(cp), device=x.device)
    whole = chunks.index_select(0, order).reshape(cp * local, *moved.shape[1:])
    return whole.movedim(0, dim)


def check_same_over_cp(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise when the CP ranks do not hold the same ``tensors`` (one small all-gather of their
    fingerprints). Every CP rank generates its data-parallel rank's rollouts itself (the same
    seeds, the same weights, CP off); if they ever differed, the ranks would train on different
    halves of different sequences without an error, so the step checks it."""
    group, cp, _ = cp_group_and_rank()
    if cp == 1:
        return
    prints = []
    for t in tensors.values():
        flat = t.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        prints += [float(flat.numel()), flat.sum(), (flat * weights.remainder(9973)).sum()]
    mine = torch.stack([torch.as_tensor(p, dtype=torch.float64, device=flat.device) for p in prints])
    every = mine.new_empty(cp * mine.numel())
    dist.all_gather_into_tensor(every, mine, group=group)
    if not bool((every.view(cp, -1) == mine).all()):
        raise RuntimeError(
            f"the context-parallel ranks of one data-parallel rank got different {what} "
            f"({sorted(tensors)}); generation must be deterministic across them (same seeds, same weights)"
        )


@contextlib.contextmanager
def context_parallel_off(model):
    """The whole sequence on every rank while inside: megatron's inference runs at CP 1 (its static
    engine does not split the sequence), so generation switches CP off, as it switches sequence
    parallel off. The config's ``context_parallel_size`` reads 1 (SDPAttention and RoPE's length
    follow it), RoPE's table is not sliced, Transformer Engine's attention gets no CP group; all
    restored afterwards, with RoPE's cache cleared on both sides (its entries depend on the CP
    state, which is not part of their key)."""
    from megatron.core.utils import get_model_config, unwrap_model

    config = get_model_config(model)
    cp = config.context_parallel_size
    if cp == 1:
        yield
        return
    modules = list(unwrap_model(model).modules())
    te_attention = [m for m in modules if hasattr(m, "set_context_parallel_group") and hasattr(m, "cp_stream")]
    # RoPE, SDPAttention (and the model's own, read by MTP only) hold the group as ``cp_group``
    holders = [
        (m, m.cp_group)
        for m in modules
        if isinstance(getattr(m, "cp_group", None), dist.ProcessGroup) and m not in te_attention
    ]
    saved_te = [(m, getattr(m, "cp_group", None), getattr(m, "cp_global_ranks", None)) for m in te_attention]
    _clear_rotary_cache()
    config.context_parallel_size = 1
    for holder, _ in holders:
        holder.cp_group = None
    for m in te_attention:
        m.set_context_parallel_group(None, None, None, getattr(m, "cp_comm_type", "p2p"))
    try:
        yield
    finally:
        config.context_parallel_size = cp
        for holder, group in holders:
            holder.cp_group = group
        for m, group, ranks in saved_te:
            m.set_context_parallel_group(group, ranks, m.cp_stream, getattr(m, "cp_comm_type", "p2p"))
        _clear_rotary_cache()


def _clear_rotary_cache() -> None:
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    cache_clear = getattr(RotaryEmbedding.forward, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
