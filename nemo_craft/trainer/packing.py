"""Micro-batches of a step's sequences: padded rows, or packed by a token budget.

    mbs = split_micro_batches(tensors_BS, lengths_B, micro_batch_size=4)          # padded rows
    mbs = split_micro_batches(tensors_BS, lengths_B, max_tokens=4096, pad_multiple=2)   # packed
    values_BS = mbs.to_rows(forward_only(model, mbs.items, value_fn))

Padded (``max_tokens`` None): consecutive rows, ``micro_batch_size`` at a time, each row as long
as the longest sequence of the step: the layout every pass used before packing, unchanged.

Packed: sequences are packed into micro-batches of at most ``max_tokens`` tokens, as verl's
dynamic batch size and NeMo-RL's sequence packing do, with the tokens balanced between them
(every pack is padded to the longest, see :func:`plan_packs`).
A packed micro-batch is one row ``[1, L]``: its sequences end to end (``cu_seqlens``), position
ids restarting at 0 for each, and megatron's ``PackedSeqParams`` with ``qkv_format="thd"``, which
makes the attention block-diagonal causal (Transformer Engine's attention on GPUs,
:class:`~nemo_craft.models.sdpa.SDPAttention` elsewhere) and restarts RoPE at every sequence
(megatron applies it per ``cu_seqlens`` segment). The packs depend only on the lengths and the budget, so the same step
gives the same packs on every rank of a model-parallel group, after a resume and on every run.

Shape letters: B sequences of the step, S their padded length, P packs, L tokens per pack.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["MicroBatches", "Pack", "check_packing", "plan_packs", "split_micro_batches", "select_sequences"]


def check_packing(model_cfg, max_tokens: int, pad_multiple: int, context_parallel_size: int = 1) -> None:
    """Refuse a budget the model or the layout cannot pack (one line naming the fix)."""
    from nemo_craft.models.provider import te_available

    if context_parallel_size > 1:
        # would need every sequence of a pack padded to 2 CP and split per sequence (thd under CP)
        raise ValueError(
            f"trainer.max_tokens_per_microbatch={max_tokens} packs sequences, which context parallel "
            f"(parallel.context_parallel_size={context_parallel_size}) does not take; leave packing off "
            "(trainer.max_tokens_per_microbatch=null) or use context_parallel_size=1"
        )
    if model_cfg.core_attention == "local" and not te_available():
        raise ValueError(
            f"trainer.max_tokens_per_microbatch={max_tokens} packs sequences, which megatron's local attention "
            "(model.core_attention=local) cannot take; use model.core_attention=sdpa or leave packing off"
        )
    _check_multiple(max_tokens, pad_multiple)


def _check_multiple(max_tokens: int, pad_multiple: int) -> None:
    if max_tokens % pad_multiple:
        raise ValueError(
            f"trainer.max_tokens_per_microbatch={max_tokens} is not a multiple of {pad_multiple} "
            "(the tensor-parallel size, which sequence parallel splits the tokens by); use a multiple"
        )


def plan_packs(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Sequence indices per pack, each pack at most ``max_tokens`` tokens, its sequences in index
    order. Deterministic (ties broken by index).

    Every pack is padded to the longest one (one shape for the pipeline schedule), so the plan
    minimises packs x longest pack: for each number of packs from the fewest (first-fit
    decreasing's count) to twice that, the sequences are spread longest first, each to the
    emptiest pack; the cheapest spread within the budget wins (on a tie, fewer packs)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}: must be >= 1")
    too_long = [n for n in lengths if n > max_tokens]
    if too_long:
        raise ValueError(
            f"a sequence of {max(too_long)} tokens does not fit trainer.max_tokens_per_microbatch={max_tokens}; "
            f"raise it to at least the longest sequence (rollout.generation.max_sequence_length)"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    fewest = _first_fit_count(order, lengths, max_tokens)
    best: Optional[tuple[int, list[list[int]]]] = None
    n_packs = fewest
    while n_packs <= len(lengths) and (best is None or n_packs <= 2 * fewest):
        packs, longest = _spread(order, lengths, n_packs)
        if longest <= max_tokens and (best is None or n_packs * longest < best[0]):
            best = (n_packs * longest, packs)
        n_packs += 1
    return [sorted(p) for p in best[1]]


def _spread(order: list[int], lengths: Sequence[int], n_packs: int) -> tuple[list[list[int]], int]:
    """Each sequence of ``order`` to the emptiest of ``n_packs`` packs (ties: the first);
    the packs and the longest one's tokens."""
    packs: list[list[int]] = [[] for _ in range(n_packs)]
    heap = [(0, p) for p in range(n_packs)]
    for i in order:
        load, p = heapq.heappop(heap)
        packs[p].append(i)
        heapq.heappush(heap, (load + lengths[i], p))
    return packs, max(load for load, _ in heap)


def _first_fit_count(order: list[int], lengths: Sequence[int], max_tokens: int) -> int:
    room: list[int] = []
    for i in order:
        for p, free in enumerate(room):
            if lengths[i] <= free:
                room[p] -= lengths[i]
                break
        else:
            room.append(max_tokens - lengths[i])
    return len(room)


@dataclass(frozen=True)
class Pack:
    """Where the sequences of one packed micro-batch sit in its row."""

    rows: tuple[int, ...]
    """The sequences' rows in the step's [B, S] tensors, in pack order."""
    lengths: tuple[int, ...]
    """Tokens of each sequence; sequence i occupies [offsets[i], offsets[i] + lengths[i])."""
    width: int
    """L: tokens of the pack, padding at the end included."""

    @property
    def offsets(self) -> list[int]:
        out, o = [], 0
        for n in self.lengths:
            out.append(o)
            o += n
        return out

    @property
    def segments(self) -> list[int]:
        """The lengths of the attention segments: the sequences, then the padding (its own
        segment: it attends only to itself, so every row of the attention has a key)."""
        pad = self.width - sum(self.lengths)
        return list(self.lengths) + ([pad] if pad else [])

    def packed_seq_params(self, device):
        from megatron.core.packed_seq_params import PackedSeqParams

        segments = self.segments
        cu = torch.tensor([0] + segments, dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)
        # Context parallel would need every sequence padded to a multiple of 2 * cp_size, with the
        # padded boundaries in cu_seqlens_q_padded / cu_seqlens_kv_padded.
        return PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=cu,
            cu_seqlens_kv=cu,
            max_seqlen_q=max(segments),
            max_seqlen_kv=max(segments),
        )

    def sequences(self, mb: dict, logits_1LV: torch.Tensor) -> Iterator[tuple[dict, torch.Tensor]]:
        """Each sequence as a padded-layout micro-batch of one row: ``(mb_i, logits [1, n_i, V])``
        with ``mb_i``'s token tensors ``[1, n_i]`` and its per-sequence tensors ``[1]``. The
        logits are pieces of one split, so the backward writes the pack's gradient in one piece
        (slicing each would write a zero-filled [1, L, V] per sequence). The unsafe split: a loss
        may modify its logits in place (megatron's cross entropy does), which autograd refuses on
        views of a multi-output split; the pieces are disjoint and nothing else reads the pack's
        logits, so that is safe here."""
        pieces = torch.unsafe_split_with_sizes(logits_1LV, self.segments, dim=1)
        per_token = [k for k, v in mb.items() if isinstance(v, torch.Tensor) and v.dim() == 2]
        per_seq = [k for k, v in mb.items() if isinstance(v, torch.Tensor) and v.dim() == 1]
        for i, (o, n) in enumerate(zip(self.offsets, self.lengths)):
            mb_i = {k: mb[k][:, o : o + n] for k in per_token}
            mb_i.update({k: mb[k][i : i + 1] for k in per_seq})
            yield mb_i, pieces[i]


@dataclass
class MicroBatches:
    """A pass's micro-batches and how to map per-token values back to the step's rows."""

    items: list[dict]
    """Micro-batch dicts for ``megatron_step``: ``[b, s]`` token tensors and ``[b]`` per-sequence
    tensors; packed ones have b = 1 and carry ``packed_seq_params`` and ``pack``."""
    rows: int
    """B: sequences of the step."""
    width: int
    """S: the padded length of the step's rows."""
    pad_fraction: float
    """Share of the tokens the passes compute that are padding."""

    @property
    def packed(self) -> bool:
        return "pack" in self.items[0]

    def to_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Per-token values of the micro-batches, concatenated (``[n_mb * b, s]``, as
        ``forward_only`` returns them) -> ``[B, S]`` in the step's rows (0 on padding)."""
        if not self.packed:
            return values
        out = torch.zeros(self.rows, self.width, dtype=values.dtype, device=values.device)
        for p, mb in enumerate(self.items):
            pack: Pack = mb["pack"]
            for r, o, n in zip(pack.rows, pack.offsets, pack.lengths):
                out[r, :n] = values[p, o : o + n]
        return out


def split_micro_batches(
    tensors: dict[str, torch.Tensor],
    lengths: torch.Tensor,
    *,
    micro_batch_size: int = 1,
    max_tokens: Optional[int] = None,
    pad_multiple: int = 1,
) -> MicroBatches:
    """Micro-batches of ``tensors`` (``input_ids`` [B, S] and any other [B, S] or [B] tensors).

    ``lengths`` [B]: valid tokens of each row. ``max_tokens`` None: padded rows,
    ``micro_batch_size`` at a time (B must divide). Else packed, at most ``max_tokens`` tokens a
    micro-batch: megatron's pipeline schedule takes one shape per step, so every pack is padded to
    the longest pack rounded up to ``pad_multiple`` (the TP size under sequence parallel, which
    splits the tokens), not to the budget: fewer padded tokens, the same shape for all of them.
    """
    B, S = tensors["input_ids"].shape
    lengths_B = [int(n) for n in lengths]
    if len(lengths_B) != B or max(lengths_B) > S:
        raise ValueError(f"lengths {lengths_B} do not describe the rows of a [{B}, {S}] batch")
    if max_tokens is None:
        return MicroBatches(_padded(tensors, micro_batch_size), B, S, 1.0 - sum(lengths_B) / (B * S))
    _check_multiple(max_tokens, pad_multiple)
    plan = plan_packs(lengths_B, max_tokens)
    width = -(-max(sum(lengths_B[i] for i in p) for p in plan) // pad_multiple) * pad_multiple
    items = [_pack(tensors, lengths_B, p, width) for p in plan]
    return MicroBatches(items, B, S, 1.0 - sum(lengths_B) / (len(plan) * width))


def _padded(tensors: dict[str, torch.Tensor], micro_batch_size: int) -> list[dict]:
    B, S = tensors["input_ids"].shape
    if B % micro_batch_size:
        raise ValueError(
            f"{B} sequences do not split into micro-batches of {micro_batch_size}; "
            "make tasks_per_step * group_size / DP a multiple of trainer.micro_batch_size"
        )
    pos = torch.arange(S, device=tensors["input_ids"].device).unsqueeze(0).expand(micro_batch_size, -1)
    out = []
    for i in range(0, B, micro_batch_size):
        mb = {k: v[i : i + micro_batch_size] for k, v in tensors.items()}
        mb["position_ids"] = pos
        out.append(mb)
    return out


def _pack(tensors: dict[str, torch.Tensor], lengths_B: list[int], rows: list[int], width: int) -> dict:
    B, S = tensors["input_ids"].shape
    device = tensors["input_ids"].device
    pack = Pack(rows=tuple(rows), lengths=tuple(lengths_B[r] for r in rows), width=width)
    mb: dict = {}
    for k, v in tensors.items():
        if v.dim() == 2 and tuple(v.shape) == (B, S):
            row = torch.zeros(1, width, dtype=v.dtype, device=device)  # padding: token 0, mask False
            for r, o, n in zip(pack.rows, pack.offsets, pack.lengths):
                row[0, o : o + n] = v[r, :n]
            mb[k] = row
        elif v.dim() == 1 and v.shape[0] == B:
            mb[k] = v[list(rows)]
        else:
            raise ValueError(f"tensor {k!r} of shape {tuple(v.shape)} is neither [B, S] = {(B, S)} nor [B]")
    # positions restart at every sequence (RoPE itself restarts through cu_seqlens)
    mb["position_ids"] = torch.cat([torch.arange(n, device=device) for n in pack.segments]).unsqueeze(0)
    mb["packed_seq_params"] = pack.packed_seq_params(device)
    mb["pack"] = pack
    return mb


def select_sequences(batch, index: torch.Tensor, width: int, columns: Optional[torch.Tensor] = None):
    """``batch.select(index)`` (a loss's ``TokenBatch``) with its per-token fields cut to the
    first ``width`` positions: the rows of a packed sequence, whose logits are only that long.
    The full width returns ``batch.select(index)`` itself. ``columns`` (a context-parallel
    rank's global positions, the micro-batch's ``cp_columns``): those positions instead."""
    sub = batch.select(index)
    B, S = sub.loss_mask.shape
    if columns is None and width == S:
        return sub
    cut = copy.copy(sub)  # as select(): a part of a checked batch is not checked again
    for f in dataclasses.fields(sub):
        value = getattr(sub, f.name)
        if isinstance(value, torch.Tensor) and tuple(value.shape) == (B, S):
            setattr(cut, f.name, value[:, :width] if columns is None else value.index_select(1, columns))
    return cut
