"""The local spec's two core attentions side by side: megatron's unfused ``DotProductAttention``
(``model.core_attention=local``) against :class:`nemo_craft.models.sdpa.SDPAttention` (``sdpa``,
the default), one training forward + backward of the whole model per sequence length.

    python scripts/bench_attention.py                    # CPU, fp32, short sequences
    python scripts/bench_attention.py --device cuda      # one GPU, bf16, up to 8k tokens

Both models get the same weights and tokens. Prints per sequence length and attention: seconds
(median of --repeats after a warm-up), peak memory above the weights (CUDA: the allocator's peak;
CPU: not measured), and sdpa / local; and the largest logit difference between the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_craft.testing.distributed import run_distributed  # noqa: E402

# A small Qwen3-like shape: 16 query heads of 64 over 4 key/value groups.
MODEL = dict(
    num_layers=4,
    hidden_size=1024,
    ffn_hidden_size=2816,
    num_attention_heads=16,
    num_query_groups=4,
    kv_channels=64,
    vocab_size=2048,
    make_vocab_size_divisible_by=128,
    max_position_embeddings=16384,
)


def _bench(seq_lens: list, batch: int, repeats: int, dtype: str) -> list:
    import torch

    from nemo_craft.models.config import ModelConfig
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.parallel.cpu_mode import compute_device

    device = compute_device()
    cuda = device.type == "cuda"
    models = {}
    for attention in ("local", "sdpa"):
        torch.manual_seed(0)
        (model,) = build_model(ModelConfig(**MODEL, params_dtype=dtype, core_attention=attention), ParallelConfig())
        models[attention] = model
    models["sdpa"].load_state_dict(models["local"].state_dict())
    rows = []
    for seq in seq_lens:
        gen = torch.Generator().manual_seed(seq)
        tokens = torch.randint(0, MODEL["vocab_size"], (batch, seq), generator=gen).to(device)
        positions = torch.arange(seq, device=device).unsqueeze(0).expand(batch, -1)
        logits = {}
        for attention, model in models.items():
            try:
                rows.append(_measure(model, tokens, positions, repeats, cuda, logits, attention))
            except torch.OutOfMemoryError:  # the unfused scores outgrow the GPU: say so, go on
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                rows.append(dict(seq=seq, attention=attention, seconds=float("nan"), peak_mib=float("inf")))
        diff = (logits["sdpa"] - logits["local"]).abs().max() if len(logits) == 2 else torch.tensor(float("nan"))
        rows.append(dict(seq=seq, max_logit_diff=float(diff)))
        logits.clear()
    return rows


def _measure(model, tokens, positions, repeats, cuda, logits, attention) -> dict:
    """Median seconds of a forward + backward, and the peak memory above the weights (CUDA)."""
    import torch

    times = []
    for r in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = model(tokens, positions, None)  # [b, s, V]
        out.float().square().mean().backward()
        if cuda:
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t0)
        logits[attention] = out.detach().float()
        del out
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
    return dict(seq=tokens.shape[1], attention=attention, seconds=statistics.median(times), peak_mib=peak)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seq", type=int, nargs="+", help="sequence lengths (default: cpu 256 1024; cuda 1024 4096 8192)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    seqs = args.seq or ([256, 1024] if args.device == "cpu" else [1024, 4096, 8192])
    dtype = "bf16" if args.device == "cuda" else "fp32"
    rows = run_distributed(
        _bench, world_size=1, timeout=3000, args=(seqs, args.batch, args.repeats, dtype), device=args.device
    )[0]
    print(
        f"model: {MODEL['num_layers']} layers, hidden {MODEL['hidden_size']}, {MODEL['num_attention_heads']} heads / "
        f"{MODEL['num_query_groups']} groups of {MODEL['kv_channels']}; {dtype}; batch {args.batch}; "
        f"forward + backward; {args.device}"
    )
    print(
        f"{'seq':>6} {'attention':<9} {'seconds':>8} {'peak MiB':>9} {'time sdpa/local':>16} {'memory sdpa/local':>18}"
    )
    by = {(r["seq"], r.get("attention")): r for r in rows}
    for seq in seqs:
        local, sdpa = by[(seq, "local")], by[(seq, "sdpa")]
        for r in (local, sdpa):
            print(f"{seq:>6} {r['attention']:<9} {r['seconds']:8.3f} {r['peak_mib']:9.0f}")
        print(
            f"{seq:>6} {'':<9} {'':>8} {'':>9} {sdpa['seconds'] / local['seconds']:16.3f} "
            f"{sdpa['peak_mib'] / local['peak_mib']:18.3f}   max |logit diff| {by[(seq, None)]['max_logit_diff']:.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
