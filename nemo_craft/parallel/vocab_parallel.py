"""Per-token statistics of vocabulary-sharded logits, without gathering the vocabulary.

Shape letters: B samples, S tokens, V vocabulary, VL = V / TP the rank's shard, N valid
(action) tokens, C tokens of a chunk, K1 = k + 1 CRINGE candidates.

``vocab_parallel_token_stats`` gives each valid token its target log-prob, entropy and (for CRINGE)
two logits, reducing the vocabulary over ``tp_group`` in chunks of C tokens inside one autograd
Function whose backward needs no collective, so the loss never holds a full-size softmax; padding
columns of the vocabulary take no part. How, and why the normaliser stays out of autograd:
docs/algorithm.md#parallelism-contract, docs/megatron_notes.md#hand-written-vocabulary-parallel-statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from nemo_craft.parallel.sibling_stats import group_size

__all__ = ["TokenStats", "vocab_parallel_token_stats", "counter_uniforms"]

_MASK32 = 0xFFFFFFFF
_PADDING_LOGIT = -1.0e30


@dataclass
class TokenStats:
    """Per valid token (row-major order of the mask's True entries), all float32 [N]."""

    logp: torch.Tensor
    """log pi(y): differentiable."""
    entropy: torch.Tensor
    """H(pi) over the full vocabulary: differentiable."""
    z_target: Optional[torch.Tensor] = None
    """CRINGE only: the raw logit z_y, differentiable."""
    z_positive: Optional[torch.Tensor] = None
    """CRINGE only: the raw logit z_s of the drawn positive token, differentiable."""
    positive_ids: Optional[torch.Tensor] = None
    """CRINGE only: [N] int64 global vocabulary id of the drawn positive token s."""
    index: Optional[tuple] = None
    """(b_N, s_N): the sample and position of each valid token, ``mask_BS.nonzero(as_tuple=True)``;
    ``x_BS[b_N, s_N]`` lines a [B, S] tensor up with the stats without another nonzero."""


def vocab_parallel_token_stats(
    logits_BSV: torch.Tensor,
    targets_BS: torch.Tensor,
    mask_BS: torch.Tensor,
    *,
    tp_group: Optional[dist.ProcessGroup] = None,
    chunk_size: int = 128,
    cringe_uniforms_BS: Optional[torch.Tensor] = None,
    cringe_k: int = 5,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
    check_targets: bool = True,
) -> TokenStats:
    """Target log-prob and entropy of the valid tokens of (vocab-sharded) logits.

    logits_BSV: [B, S, VL], any float dtype and strides (megatron's [S, B, V] transposed is fine,
    no copy is made); targets_BS: [B, S] global vocabulary ids; mask_BS: [B, S] bool.
    cringe_uniforms_BS: [B, S] numbers in [0, 1) (see ``counter_uniforms``), identical on every
    TP rank; given, the CRINGE outputs are computed too.
    vocab_size: the real vocabulary (``ModelConfig.vocab_size``); logit columns at and beyond it
    are padding and take no part. None: every column is real.
    temperature: the statistics are those of softmax(logits / temperature) (the behaviour
    policy of rollouts sampled at that temperature; CRINGE's z are the scaled logits too). The
    division is done chunk by chunk in float32 (no copy of the logits); 1.0 skips it.
    check_targets: check that the valid tokens' targets are vocabulary ids, which reads two
    values on the host (a GPU sync); False for callers that checked the step's targets once
    (the training loss, which must not sync per micro-batch).
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: must be > 0")
    if logits_BSV.dim() != 3 or tuple(logits_BSV.shape[:2]) != tuple(mask_BS.shape):
        raise ValueError(
            f"logits must be [B, S, V/TP] matching loss_mask [B, S]; got logits "
            f"{tuple(logits_BSV.shape)} and mask {tuple(mask_BS.shape)}"
        )
    if tuple(targets_BS.shape) != tuple(mask_BS.shape) or targets_BS.is_floating_point():
        raise ValueError(
            f"targets must be integer [B, S] = {tuple(mask_BS.shape)}, got {tuple(targets_BS.shape)} {targets_BS.dtype}"
        )
    world = group_size(tp_group)
    vocab_local = logits_BSV.shape[-1]
    vocab_start = (dist.get_rank(tp_group) if world > 1 else 0) * vocab_local
    padded = vocab_local * world
    if vocab_size is not None and not 1 <= vocab_size <= padded:
        raise ValueError(f"vocab_size={vocab_size} must be in [1, {padded}] (the logits' vocabulary width)")
    real = padded if vocab_size is None else vocab_size
    # this shard's real columns; None when it has no padding (the unmasked, bit-identical path)
    valid_local = min(max(real - vocab_start, 0), vocab_local)
    valid_local = None if valid_local == vocab_local else valid_local
    b_N, s_N = torch.nonzero(mask_BS, as_tuple=True)
    targets_N = targets_BS[b_N, s_N].long()
    if check_targets and targets_N.numel() and (int(targets_N.min()) < 0 or int(targets_N.max()) >= real):
        raise ValueError(
            f"targets must be vocabulary ids in [0, {real}) on valid tokens; "
            f"got range [{int(targets_N.min())}, {int(targets_N.max())}]"
        )
    cringe = cringe_uniforms_BS is not None
    if cringe and vocab_local * world < 2:
        raise ValueError("CRINGE needs a vocabulary of at least 2 tokens")
    u_N = cringe_uniforms_BS[b_N, s_N].double() if cringe else None
    out = _TokenStatsFn.apply(
        logits_BSV,
        b_N,
        s_N,
        targets_N,
        u_N,
        vocab_start,
        tp_group,
        int(chunk_size),
        int(cringe_k),
        valid_local,
        1.0 / float(temperature),
    )
    logp, entropy, z_target, z_positive, positive_ids = out
    if not cringe:
        return TokenStats(logp, entropy, index=(b_N, s_N))
    return TokenStats(logp, entropy, z_target, z_positive, positive_ids, index=(b_N, s_N))


def counter_uniforms(
    seed: int, step: int, sample_ids_B: torch.Tensor, seq_len: int, positions_S: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """[B, S] float64 in (0, 1): a counter-based hash of (seed, step, sample id, position).

    The same numbers on every rank and for any micro-batch split; no generator state is used.
    ``positions_S``: the positions of the S columns (a context-parallel rank's part of the
    sequence); None: 0..S-1.
    """
    h = _mix32_int(_mix32_int(seed & _MASK32) ^ (step & _MASK32))
    h = _mix32_int(h ^ ((seed >> 32) & _MASK32) ^ ((step >> 32) & _MASK32))
    ids = sample_ids_B.long()[:, None]
    pos = torch.arange(seq_len, dtype=torch.long, device=ids.device) if positions_S is None else positions_S.long()
    pos = pos.to(ids.device)[None, :]
    x = _mix32(_mix32((ids & _MASK32) ^ h) ^ ((ids >> 32) & _MASK32))
    x = _mix32(x ^ pos)
    return (x.double() + 0.5) / 2.0**32


class _TokenStatsFn(torch.autograd.Function):
    """forward: chunked max / sum-exp / target reductions over the TP group;
    backward: local recomputation of each chunk's softmax, no collective."""

    @staticmethod
    def forward(ctx, logits, b_N, s_N, targets_N, u_N, vocab_start, group, chunk, k, valid_local, inv_t):
        world = group_size(group)
        n, vocab_local = b_N.shape[0], logits.shape[-1]
        f32 = dict(dtype=torch.float32, device=logits.device)
        logp, entropy, lse = (torch.empty(n, **f32) for _ in range(3))
        cringe = u_N is not None
        z_y, z_s = (torch.empty(n if cringe else 0, **f32) for _ in range(2))
        pos_ids = torch.empty(n if cringe else 0, dtype=torch.long, device=logits.device)
        for c0 in range(0, n, chunk):
            sl = slice(c0, min(c0 + chunk, n))
            z = logits[b_N[sl], s_N[sl]].float()  # [C, VL], a fresh copy: safe to modify
            if inv_t != 1.0:
                z.mul_(inv_t)
            if valid_local is not None:
                z[:, valid_local:] = _PADDING_LOGIT
            local_t, owned = _local_ids(targets_N[sl], vocab_start, vocab_local)
            z_t = torch.where(owned, z.gather(1, local_t[:, None])[:, 0], 0.0)
            if cringe:
                cand_v, cand_i = z.topk(min(k + 1, vocab_local), dim=1)
                cand = (cand_v, cand_i + vocab_start)
            m = z.amax(dim=1)
            if world > 1:
                dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
            z.sub_(m[:, None])
            e = torch.exp(z)
            sums = torch.stack([e.sum(dim=1), e.mul_(z).sum(dim=1), z_t])  # [3, C]
            del e, z
            if world > 1:
                dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
            log_se = torch.log(sums[0])
            logp[sl] = (sums[2] - m) - log_se
            entropy[sl] = log_se - sums[1] / sums[0]
            lse[sl] = m + log_se
            if cringe:
                z_y[sl] = sums[2]
                z_s[sl], pos_ids[sl] = _draw_positive(*cand, targets_N[sl], u_N[sl], k, group, world)
        ctx.save_for_backward(logits, b_N, s_N, targets_N, lse, entropy, pos_ids)
        ctx.meta = (vocab_start, chunk, cringe, valid_local, inv_t, world == 1)
        ctx.mark_non_differentiable(pos_ids)
        return logp, entropy, z_y, z_s, pos_ids

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_zy, g_zs, _g_pos):
        logits, b_N, s_N, targets_N, lse, entropy, pos_ids = ctx.saved_tensors
        vocab_start, chunk, cringe, valid_local, inv_t, whole_vocab = ctx.meta
        vocab_local = logits.shape[-1]
        grad = torch.zeros_like(logits)
        for c0 in range(0, b_N.shape[0], chunk):
            sl = slice(c0, min(c0 + chunk, b_N.shape[0]))
            z = logits[b_N[sl], s_N[sl]].float()
            if inv_t != 1.0:
                z.mul_(inv_t)
            if valid_local is not None:
                z[:, valid_local:] = _PADDING_LOGIT  # p = 0 there: no gradient into the padding
            z.sub_(lse[sl, None])  # log p_v
            p = torch.exp(z)
            # dL/dz_v = -p_v * (g_logp + g_ent * (log p_v + H)) + g_logp * 1[v = y]
            z.add_(entropy[sl, None]).mul_(g_ent[sl, None]).add_(g_logp[sl, None])
            p.mul_(z).neg_()
            del z
            rows = torch.arange(p.shape[0], device=p.device)
            spikes = [(targets_N[sl], g_logp[sl])]
            if cringe:
                spikes += [(targets_N[sl], g_zy[sl]), (pos_ids[sl], g_zs[sl])]
            for ids, g in spikes:
                if whole_vocab:  # one shard owns every id: no boolean mask (a GPU sync) to apply
                    p.index_put_((rows, ids), g, accumulate=True)
                    continue
                local, owned = _local_ids(ids, vocab_start, vocab_local)
                p.index_put_((rows[owned], local[owned]), g[owned], accumulate=True)
            if inv_t != 1.0:
                p.mul_(inv_t)  # d(z / T) / dz
            grad[b_N[sl], s_N[sl]] = p.to(grad.dtype)
            del p  # before the next chunk's buffers exist
        return grad, None, None, None, None, None, None, None, None, None, None


def _local_ids(ids, vocab_start: int, vocab_local: int):
    """(ids local to this shard, clamped into range; which ids this shard owns)."""
    local = ids - vocab_start
    owned = (local >= 0) & (local < vocab_local)
    return local.clamp(0, vocab_local - 1), owned


def _draw_positive(cand_v, cand_i, targets, u, k: int, group, world: int):
    """CRINGE's positive: one draw from the global top-(k+1) logits with y masked out.

    cand_v / cand_i: [C, <= k+1] this shard's top logits and their global ids. The candidates
    of all ranks are gathered and put in a canonical order (value desc, id asc), so every rank
    (and every TP size) draws the same token with the same u. The draw is proportional to
    softmax over the candidates (y's probability 0). Returns (z_s [C] float32, s [C] int64).
    """
    if world > 1:
        packed = torch.cat([cand_v.double(), cand_i.double()], dim=1)
        parts = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(parts, packed.contiguous(), group=group)
        width = cand_v.shape[1]
        cand_v = torch.cat([p[:, :width] for p in parts], dim=1).float()
        cand_i = torch.cat([p[:, width:] for p in parts], dim=1).long()
    by_id = torch.argsort(cand_i, dim=1)
    cand_v, cand_i = cand_v.gather(1, by_id), cand_i.gather(1, by_id)
    by_value = torch.argsort(cand_v, dim=1, descending=True, stable=True)[:, : k + 1]
    cand_v, cand_i = cand_v.gather(1, by_value), cand_i.gather(1, by_value)
    weight = torch.softmax(cand_v.double().masked_fill(cand_i == targets[:, None], -torch.inf), dim=1)
    cdf = torch.cumsum(weight, dim=1)
    pick = (cdf <= (u * cdf[:, -1])[:, None]).sum(dim=1).clamp(max=cand_v.shape[1] - 1)
    return cand_v.gather(1, pick[:, None])[:, 0], cand_i.gather(1, pick[:, None])[:, 0]


def _mix32_int(x: int) -> int:
    """lowbias32 integer hash (C. Wellons) on a Python int in [0, 2**32)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """``_mix32_int`` on an int64 tensor of values in [0, 2**32) (products wrap mod 2**64)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)
