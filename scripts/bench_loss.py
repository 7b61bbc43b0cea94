"""Benchmark of the loss library: CRAFT vs SDAR time, credit cost, loss memory.

    python scripts/bench_loss.py                 # vocab 32k and 152k, 4k and 16k tokens, TP 1 and 2
    python scripts/bench_loss.py --quick         # small sizes that finish in minutes on a CPU
    python scripts/bench_loss.py --device cuda --tp 1

For each (vocabulary V, tokens T, tensor-parallel size TP), on the same inputs in one run:

- loss time: CRAFT's policy loss forward + backward over SDAR's (target <= 1.03);
- credit cost: ``compute_credits`` (CRAFT: advantages, CTI, credits) over one forward of a
  small transformer (2 layers, hidden 512, vocabulary V) over the same tokens (target <= 0.01);
- loss memory: peak memory allocated during the loss forward + backward (the logits'
  gradient included, the logits themselves not) over the size of the rank's logits, for the
  chunked vocabulary-parallel path and for a naive path that gathers the vocabulary and takes
  a full log_softmax (target <= 1.25 for the chunked path).

TP 2 runs in two spawned processes on gloo (CPU). Times are the fastest of ``--repeats`` runs:
wall time on CUDA, process CPU time on the CPU (robust on a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nemo_craft.losses import ControllerState, LossConfig, TokenBatch, compute_credits, policy_loss, terms

SEQ = 512
GROUP = 8


def make_batch(tokens: int, vocab: int, device, seed: int = 0):
    """B = tokens / 512 trajectories in groups of 8, observation/action turns (~60% action)."""
    gen = torch.Generator().manual_seed(seed)
    b = max(tokens // SEQ, 1)
    seg = torch.randint(8, 48, (b, SEQ), generator=gen)
    idx = torch.arange(SEQ)
    period = seg[:, :1]
    turn = idx[None, :] // period
    pos = idx[None, :] % period
    mask = pos >= (period * 2) // 5  # the last 60% of each turn is the action
    pos = pos - (period * 2) // 5
    lp = -torch.rand(b, SEQ, generator=gen) * 2
    batch = TokenBatch(
        logp_old=lp,
        logp_teacher=lp + torch.randn(b, SEQ, generator=gen),
        logp_ref=lp + 0.3 * torch.randn(b, SEQ, generator=gen),
        loss_mask=mask,
        rewards=torch.randint(0, 2, (b,), generator=gen).float(),
        group_ids=torch.arange(b) // GROUP,
        turn_ids=turn,
        pos_in_turn=pos.clamp(min=0),
    )
    targets = torch.randint(0, vocab, (b, SEQ), generator=gen)
    moved = {
        f.name: getattr(batch, f.name).to(device)
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    return dataclasses.replace(batch, **moved), targets.to(device)


class SmallLM(torch.nn.Module):
    """2-layer transformer, hidden 512: the 'small model' whose forward prices compute_credits."""

    def __init__(self, vocab: int, hidden: int = 512, layers: int = 2):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, hidden)
        layer = torch.nn.TransformerEncoderLayer(hidden, 8, 4 * hidden, batch_first=True, dropout=0.0)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids):
        return self.head(self.body(self.emb(ids)))


class _GatherVocab(torch.autograd.Function):
    """forward: all-gather the vocabulary shards; backward: this rank's slice."""

    @staticmethod
    def forward(ctx, shard, group):
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, shard.contiguous(), group=group)
        ctx.rank, ctx.width = dist.get_rank(group), shard.shape[-1]
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        return grad[..., ctx.rank * ctx.width : (ctx.rank + 1) * ctx.width], None


def naive_loss(logits, targets, batch, cfg, state, tp_group):
    """CRAFT's loss with the vocabulary gathered and a full log_softmax (the memory baseline)."""
    full = _GatherVocab.apply(logits, tp_group) if tp_group is not None else logits
    mask = batch.loss_mask
    logsm = torch.log_softmax(full.float(), dim=-1)
    logp = logsm.gather(-1, targets[..., None])[..., 0][mask]
    entropy = -(logsm.exp() * logsm).sum(-1)[mask]
    lo, lt, lr = (getattr(batch, n)[mask].float() for n in ("logp_old", "logp_teacher", "logp_ref"))
    credit = batch.credit[mask]
    adv = batch.advantages[:, None].expand(mask.shape)[mask]
    pg, _ = terms.pg_clip(logp, lo, adv, eps=cfg.clip_eps, dual_clip=cfg.dual_clip)
    per = pg + terms.entropy_bonus(entropy, coef=cfg.entropy_coef)
    per = per + state.beta * terms.polarized_kl(logp, lr, credit, clamp=cfg.kl_clamp)
    per = per + terms.sd_term(logp, lt, credit, coef=state.lam)
    return per.sum() / batch.num_global_tokens


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn, device, repeats):
    """Fastest of ``repeats`` runs after a warm-up: wall time on CUDA; on the CPU the process's
    CPU time (all threads), which a busy shared machine disturbs far less than wall time."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = clock()
        fn()
        _sync(device)
        times.append(1e3 * (clock() - t0))
    return min(times)


def _peak_bytes(fn, device):
    """Peak bytes allocated by ``fn`` above what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure(vocab, tokens, dtype, device, repeats, tp_group=None, with_model=True, chunk_size=None):
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    rank = dist.get_rank(tp_group) if tp_group is not None else 0
    raw, targets = make_batch(tokens, vocab, device)
    chunk = {} if chunk_size is None else {"chunk_size": chunk_size}
    craft, sdar = LossConfig.preset("craft", **chunk), LossConfig.preset("sdar", **chunk)
    b_craft, b_sdar = compute_credits(raw, craft), compute_credits(raw, sdar)
    state = ControllerState.initial(craft).update(0.7)
    gen = torch.Generator().manual_seed(1 + rank)
    logits = (2 * torch.randn(raw.batch_size, SEQ, vocab // tp, generator=gen)).to(device=device, dtype=dtype)
    leaf = logits.requires_grad_(True)

    def step(loss_fn):
        def run():
            leaf.grad = None
            loss_fn().backward()

        return run

    run_craft = step(lambda: policy_loss(leaf, targets, b_craft, craft, state, tp_group=tp_group)[0])
    run_sdar = step(lambda: policy_loss(leaf, targets, b_sdar, sdar, state, tp_group=tp_group)[0])
    run_naive = step(lambda: naive_loss(leaf, targets, b_craft, craft, state, tp_group))
    craft_ms, sdar_ms = [], []
    for i in range(repeats):  # interleaved, in alternating order, so drift hits both alike
        pair = [(craft_ms, run_craft), (sdar_ms, run_sdar)]
        for times, run in pair if i % 2 == 0 else pair[::-1]:
            times.append(_time_ms(run, device, 1))
    row = dict(V=vocab, T=int(raw.loss_mask.numel()), TP=tp, craft_ms=min(craft_ms), sdar_ms=min(sdar_ms))
    row["time_ratio"] = row["craft_ms"] / row["sdar_ms"]
    leaf.grad = None
    logits_bytes = leaf.numel() * leaf.element_size()
    row["mem_chunked"] = _peak_bytes(run_craft, device) / logits_bytes
    leaf.grad = None
    row["mem_naive"] = _peak_bytes(run_naive, device) / logits_bytes
    leaf.grad = None
    if with_model:
        row["credits_ms"] = _time_ms(lambda: compute_credits(raw, craft), device, repeats)
        model = SmallLM(vocab).to(device=device, dtype=dtype).eval()
        ids = targets.clone()
        with torch.no_grad():
            row["fwd_ms"] = _time_ms(lambda: model(ids), device, repeats)
        row["credit_ratio"] = row["credits_ms"] / row["fwd_ms"]
    return row


def _tp_worker(rank, world, port, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = [
            measure(
                v,
                t,
                args.dtype,
                torch.device("cpu"),
                args.repeats,
                dist.group.WORLD,
                with_model=False,
                chunk_size=args.chunk_size,
            )
            for v, t in args.sizes
        ]
        if rank == 0:
            queue.put(rows)
    finally:
        dist.destroy_process_group()


def run_tp(world, args):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_tp_worker, args=(r, world, port, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    rows = queue.get()
    for p in procs:
        p.join()
    return rows


def print_table(rows):
    head = (
        f"| {'V':>7} | {'tokens':>6} | TP | CRAFT ms | SDAR ms | CRAFT/SDAR | credits ms | fwd ms "
        f"| credits/fwd | mem chunked | mem naive |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        cred = (
            f"{r['credits_ms']:>10.2f} | {r['fwd_ms']:>6.1f} | {r['credit_ratio']:>11.4f}"
            if "credits_ms" in r
            else f"{'-':>10} | {'-':>6} | {'-':>11}"
        )
        print(
            f"| {r['V']:>7} | {r['T']:>6} | {r['TP']:>2} | {r['craft_ms']:>8.1f} | {r['sdar_ms']:>7.1f} "
            f"| {r['time_ratio']:>10.3f} | {cred} | {r['mem_chunked']:>10.2f}x | {r['mem_naive']:>8.2f}x |"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="vocab 8k/32k, 1k/4k tokens")
    p.add_argument("--vocab", type=int, nargs="+", default=None)
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--chunk-size", type=int, default=None, help="LossConfig.chunk_size (default: the config's)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per process (CPU timing counts process CPU time, which idle "
        "OpenMP threads inflate by spinning; 1 keeps it exact)",
    )
    args = p.parse_args(argv)
    vocab = args.vocab or ([8192, 32768] if args.quick else [32000, 152064])
    tokens = args.tokens or ([1024, 4096] if args.quick else [4096, 16384])
    args.sizes = [(v, t) for v in vocab for t in tokens]
    args.dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
        f"{args.dtype}, chunk_size {args.chunk_size or LossConfig().chunk_size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s) per process, TP > 1 on gloo/CPU"
    )
    rows = []
    if 1 in args.tp:
        rows += [measure(v, t, args.dtype, device, args.repeats, chunk_size=args.chunk_size) for v, t in args.sizes]
    for world in [t for t in args.tp if t > 1]:
        rows += run_tp(world, args)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
