"""Rank bodies of the disaggregated tests, run by torchrun: ``python -m tests.distributed._bodies_async
NAME OUT_DIR``. Each writes what the test compares to OUT_DIR/rank<r>.pt."""

from __future__ import annotations

import sys

import torch


def _tiny_model_cfg():
    from nemo_craft.models.config import ModelConfig

    return ModelConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2, vocab_size=130
    )


def refit(out_dir: str) -> None:
    """Trainers (TP=2, different initial weights from the generation rank's) take a step of noise,
    send version 1; the generation rank (TP=1) loads it. Every rank saves its full HF tensors."""
    from nemo_craft.models.provider import build_model
    from nemo_craft.models.refit import full_hf_weights
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.parallel.initialize import initialize_parallel
    from nemo_craft.runtime.disaggregated import split_world
    from nemo_craft.runtime.weight_wire import WeightSender, load_hf_tensors, recv_weights

    sides = split_world(generation_ranks=1)
    train = sides.role == "train"
    parallel = ParallelConfig(tensor_model_parallel_size=2 if train else 1)
    initialize_parallel(parallel, seed=1 if train else 2)
    cfg = _tiny_model_cfg()
    chunks = build_model(cfg, parallel)
    if train:
        with torch.no_grad():  # an "update": the weights the engine must get are not the initial ones
            for p in chunks[0].parameters():
                p.add_(0.01 * torch.randn_like(p))
        named = full_hf_weights(chunks, cfg)  # every TP rank gathers; rank 0 sends
        if sides.world_rank == 0:
            sender = WeightSender(sides.wire, sides.generation_world_ranks, bucket_bytes=20_000)
            sender.send(named, version=1)
            sender.wait()
        else:
            list(named)
        version = 1
    else:
        before = {n: t.clone() for n, t in full_hf_weights(chunks, cfg)}
        version, tensors = recv_weights(sides.wire, src=0)
        load_hf_tensors(chunks, cfg, tensors)
        assert any(not torch.equal(before[n], tensors[n]) for n in tensors)
    full = {n: t.clone() for n, t in full_hf_weights(chunks, cfg)}
    torch.save({"version": version, "weights": full}, f"{out_dir}/rank{sides.world_rank}.pt")


if __name__ == "__main__":
    globals()[sys.argv[1]](sys.argv[2])
