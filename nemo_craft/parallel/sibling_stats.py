"""Sums over siblings that may sit on other data-parallel ranks, bit-identical for any layout.

Shape letters: N local units (tokens or turns) of this rank, M units of all ranks, K key
columns, F value columns, U key rows.

Pillar 1's sibling sums and GRPO's group statistics add units that may be on other DP ranks and
micro-batches; each rank all-gathers the units once per step and adds them exactly, as integers on
a fixed-point grid per key, so the sums do not depend on the layout. ``group=None`` runs the same
code without collectives. The grid, its error bound and the local-groups shortcut:
docs/algorithm.md#parallelism-contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["SiblingTable", "gather_table", "sibling_sums", "group_size", "groups_are_local"]

_EXACT_INT = 2**53  # keys travel as float64 in the single all-gather
_SUM_BITS = 62
_DIRECT_SLACK = 4  # key rows are the combined key itself while that wastes < 4x the units


@dataclass
class SiblingTable:
    """The units of every rank (gathered, in rank order) and the key row of each.

    values: [M, F] float64; row: [M] int64 key row of each unit; counts: [U] units per row;
    local: slice of this rank's units inside the M (its N units, in input order).
    """

    values: torch.Tensor
    row: torch.Tensor
    counts: torch.Tensor
    local: slice

    @property
    def local_rows(self) -> torch.Tensor:
        """[N] key row of each of this rank's units."""
        return self.row[self.local]

    def sums(self, values_MF: Optional[torch.Tensor] = None, *, leave_one_out: bool = False) -> torch.Tensor:
        """Exact sums of ``values_MF`` (default: the gathered values) for this rank's units.

        Returns [N, F] float64: per local unit, the sum over every unit with its key, or over
        every other unit with its key (``leave_one_out``, by exact integer subtraction).
        """
        q, total, shift = self._fixed_point(values_MF)
        rows = self.local_rows
        mine = total[rows] - q[self.local] if leave_one_out else total[rows]
        return mine.double() * _pow2(-shift[rows])

    def row_sums(self, values_MF: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[U, F] float64 exact sum per key row (rows of absent keys are 0)."""
        _, total, shift = self._fixed_point(values_MF)
        return total.double() * _pow2(-shift)

    def _fixed_point(self, values_MF):
        """(q [M, F] int64 units on the grid, totals [U, F] int64, grid exponent [U, F])."""
        values = self.values if values_MF is None else values_MF.double()
        n_rows, n_col = self.counts.shape[0], values.shape[1]
        peak = values.new_zeros((n_rows, n_col)).scatter_reduce_(
            0, self.row[:, None].expand(values.shape), values.abs(), "amax"
        )
        _, exp = torch.frexp(peak)  # peak < 2**exp
        # counts < 2**count_bits: the key's n integers, each below 2**(62 - count_bits), sum below 2**62
        _, count_bits = torch.frexp(self.counts.double())
        shift = torch.where(peak > 0, _SUM_BITS - count_bits[:, None] - exp, 0).long().clamp(-1000, 1000)
        q = torch.round(values * _pow2(shift[self.row])).long()
        total = torch.zeros((n_rows, n_col), dtype=torch.long, device=values.device).index_add_(0, self.row, q)
        return q, total, shift


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    """2.0 ** exponent in float64, exactly, built from the bits (exponent in [-1022, 1023])."""
    return ((exponent + 1023) << 52).view(torch.float64)


def group_size(group: Optional[dist.ProcessGroup]) -> int:
    """World size of ``group``; 1 for None or when torch.distributed is not initialised."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def groups_are_local(group_ids_B: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> bool:
    """True when no sibling group of this rank's samples has samples on another rank of
    ``group``, so that every sibling sum can be taken locally (``group=None``).

    One all-reduce of three integers per rank (whether it has samples, its smallest and largest
    group id) and one host read: call it once per step. The answer is the same on every rank:
    True when the ranks' id ranges do not overlap, as in the trainer (rank r rolls out the
    tasks first_r .. first_r + n - 1, G siblings each). Overlapping ranges answer False even
    when the ids are disjoint: the gathered path is exact as well, only slower.
    """
    world = group_size(group)
    if world == 1:
        return True
    ids = group_ids_B.long()
    table = ids.new_zeros((world, 3))
    if ids.numel():
        table[dist.get_rank(group)] = torch.stack([torch.ones_like(ids[0]), ids.min(), ids.max()])
    dist.all_reduce(table, group=group)
    return ranges_disjoint([(low, high) for has, low, high in table.tolist() if has])


def ranges_disjoint(ranges: list[tuple[int, int]]) -> bool:
    """Whether the closed integer ranges [low, high] share no integer."""
    ordered = sorted(ranges)
    return all(prev_high < low for (_, prev_high), (low, _) in zip(ordered, ordered[1:]))


def gather_table(
    keys_NK: torch.Tensor, values_NF: torch.Tensor, group: Optional[dist.ProcessGroup] = None
) -> SiblingTable:
    """All-gather (key, value) units over ``group`` and index them by key.

    keys_NK: [N, K] integer keys in [0, 2**53); values_NF: [N, F] finite floats (as float64).
    One all-gather of the sizes and one of the packed units; no other collective.
    """
    if keys_NK.dim() != 2 or values_NF.dim() != 2 or keys_NK.shape[0] != values_NF.shape[0]:
        raise ValueError(
            f"keys [N, K] and values [N, F] must agree on N; got keys "
            f"{tuple(keys_NK.shape)} and values {tuple(values_NF.shape)}"
        )
    if keys_NK.is_floating_point():
        raise ValueError(f"keys must be integers, got {keys_NK.dtype}")
    keys_NK, values_NF = keys_NK.long(), values_NF.double()
    if keys_NK.numel() and (keys_NK.min() < 0 or keys_NK.max() >= _EXACT_INT):
        raise ValueError("sibling keys (group ids, turn ids, positions) must be in [0, 2**53)")
    n_local = keys_NK.shape[0]
    offset = 0
    if group_size(group) > 1:
        packed, offset = _all_gather_rows(torch.cat([keys_NK.double(), values_NF], dim=1), group)
        keys_MK, values_MF = packed[:, : keys_NK.shape[1]].long(), packed[:, keys_NK.shape[1] :]
    else:
        keys_MK, values_MF = keys_NK, values_NF
    row, n_rows = _key_rows(keys_MK)
    counts = torch.bincount(row, minlength=n_rows)
    return SiblingTable(values_MF, row, counts, slice(offset, offset + n_local))


def sibling_sums(
    keys_NK: torch.Tensor,
    values_NF: torch.Tensor,
    group: Optional[dist.ProcessGroup] = None,
    *,
    leave_one_out: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each local unit, the sum of ``values`` over all units (all ranks) with its key
    (minus its own value with ``leave_one_out``).

    Returns (sums [N, F] float64, counts [N] int64 of units with the key, itself included).
    Bit-identical for any DP layout and any order of the units.
    """
    table = gather_table(keys_NK, values_NF, group)
    return table.sums(leave_one_out=leave_one_out), table.counts[table.local_rows]


def _key_rows(keys_MK: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A row index per unit, equal for equal keys, and the number of rows (>= distinct keys).

    Mixed-radix combination of the key columns; the combined key is the row itself when its
    range is small (no sort), else rows come from ``torch.unique``.
    """
    m = keys_MK.shape[0]
    if m == 0:
        return keys_MK.new_zeros(0), 0
    low, high = keys_MK.min(0).values, keys_MK.max(0).values
    spans = [int(h - lo) + 1 for lo, h in zip(low.tolist(), high.tolist())]
    cols = keys_MK - low
    if _product(spans) >= 2**62:
        ranks = [torch.unique(c, return_inverse=True) for c in cols.unbind(1)]
        cols = torch.stack([inv for _, inv in ranks], 1)
        spans = [u.shape[0] for u, _ in ranks]
    combined = cols[:, 0]
    for j in range(1, cols.shape[1]):
        combined = combined * spans[j] + cols[:, j]
    total = _product(spans)
    if total <= _DIRECT_SLACK * m + 4096:
        return combined, total
    uniq, inverse = torch.unique(combined, return_inverse=True)
    return inverse, uniq.shape[0]


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _all_gather_rows(rows_NF: torch.Tensor, group) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's rows in rank order; returns (rows [M, F], this rank's offset)."""
    world = dist.get_world_size(group)
    size = torch.tensor([rows_NF.shape[0]], dtype=torch.long, device=rows_NF.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    padded = rows_NF.new_zeros((max(sizes), rows_NF.shape[1]))
    padded[: rows_NF.shape[0]] = rows_NF
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    rank = dist.get_rank(group)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)]), sum(sizes[:rank])
