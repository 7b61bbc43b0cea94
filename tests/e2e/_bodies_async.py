"""Rank bodies of the disaggregated tests, run by torchrun: ``python -m tests.e2e._bodies_async
NAME OUT_DIR [overrides...]``. Each writes what the test compares to OUT_DIR/rank<r>.pt."""

from __future__ import annotations

import os
import sys

import torch

SMALL = [
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "trainer.micro_batch_size=1",
    "rollout.max_tokens_per_episode=24",
    "env.config.max_turns=3",
    "env.config.template=compact",
    "env.config.history_length=0",
    "trainer.val_every=0",
    "logging.progress_bar=false",
    "logging.plot=false",
    "logging.tensorboard=false",
    "trainer.warm_start.steps=0",
]


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


def train(out_dir: str, *overrides: str) -> None:
    """``nemo-craft train`` in this rank (colocated or disaggregated, by the overrides); a training
    rank saves each step's batch (the trainer's pi_old and the engine's log-probs, the weights, the
    versions of the trajectories), the metrics and its final parameters. ``$KILL_AT_STEP``: the
    training ranks die at the start of that (1-based) step."""
    import json

    from nemo_craft.config import load_run
    from nemo_craft.trainer import trainer as trainer_mod

    steps = []
    real_make = trainer_mod.make_experience

    def make_experience(model, reference, trajectories, loss_cfg, **kw):
        exp = real_make(model, reference, trajectories, loss_cfg, **kw)
        b = exp.batch
        steps.append(
            {
                "versions": [list(t.policy_versions) for t in trajectories],
                "rewards": [t.reward for t in trajectories],
                "tokens": [list(t.token_ids) for t in trajectories],
                **{n: getattr(b, n) for n in ("loss_mask", "logp_old", "logp_rollout", "is_weight")},
            }
        )
        return exp

    trainer_mod.make_experience = make_experience
    trainer = trainer_mod.RLTrainer(load_run([*SMALL, f"run_dir={out_dir}/run", *overrides]))
    kill = int(os.environ.get("KILL_AT_STEP", "0"))
    if kill:
        real_step = trainer.train_step

        def train_step():
            if trainer.step + 1 == kill:
                os._exit(3)  # a crash: no drain, no stop message
            return real_step()

        trainer.train_step = train_step
    trainer.fit()
    if trainer.sides is not None and trainer.sides.role == "generate":
        return
    rows = [json.loads(line) for line in open(trainer.logger.jsonl_path)] if trainer.rank == 0 else []
    params = {n: p.detach().clone() for n, p in trainer.chunks[0].named_parameters()}
    torch.save({"steps": steps, "rows": rows, "params": params}, f"{out_dir}/rank{trainer.rank}.pt")


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
