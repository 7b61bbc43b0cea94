"""One RL step split by phase, CRAFT side by side with SDAR on the same rollouts.

    python scripts/bench_step.py                 # tiny model and one ~10x larger, TP 1 and 2
    python scripts/bench_step.py --quick         # tiny model, TP 1 only
    python scripts/bench_step.py --device cuda   # on GPUs (NCCL; TP up to the GPU count)

For each (model, TP): roll out once, then for SDAR and CRAFT in turn (same rollouts, same
starting weights): old / teacher / reference log-prob passes, credits, and the training step
(forward, backward, optimizer). Prints seconds per phase (median of --repeats), tokens/s, the
share of CRAFT's own work (its extra credit and loss work: CRAFT - SDAR per phase) and
CRAFT's step / SDAR's step (target <= 1.02).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_craft.testing.distributed import run_distributed  # noqa: E402

MODELS = {
    "tiny": [],
    "tiny_x10": ["model.num_layers=8", "model.hidden_size=256", "model.ffn_hidden_size=768", "model.kv_channels=64"],
}
BASE = [
    "trainer.warm_start.steps=0",
    "trainer.val_every=0",
    "checkpoint.dir=null",
    "checkpoint.save_every=0",
    "logging.tensorboard=false",
    "logging.jsonl=false",
    "logging.progress_bar=false",
    "logging.plot=false",
    "run_dir=/tmp/nemo_craft_bench",
]


def _bench(model_overrides: list, tp: int, repeats: int) -> dict:
    from nemo_craft.config import load_run
    from nemo_craft.losses import LossConfig
    from nemo_craft.trainer.trainer import RLTrainer

    trainer = RLTrainer(load_run(BASE + model_overrides + [f"parallel.tensor_model_parallel_size={tp}"]))
    trainer.setup()
    _sync(trainer.device)
    t0 = time.perf_counter()
    trajs = trainer.runner.run(trainer._task_seeds()[0], seed=0)
    _sync(trainer.device)
    rollout_s = time.perf_counter() - t0
    n_tokens = sum(len(t.token_ids) for t in trajs)
    start = {n: p.detach().clone() for c in trainer.model for n, p in c.named_parameters()}
    out = {"rollout_s": rollout_s, "tokens": n_tokens}
    phases = {m: {} for m in ("sdar", "craft")}
    # One discarded warm-up round, then the methods interleaved so that drift of the machine
    # falls on both alike.
    for r in range(repeats + 1):
        for method in ("sdar", "craft"):
            timings = _one_step(trainer, trajs, start, LossConfig.preset(method))
            if r:
                for k, v in timings.items():
                    phases[method].setdefault(k, []).append(v)
    for method in phases:
        out[method] = {k: statistics.median(v) for k, v in phases[method].items()}
    trainer.runner.close()
    return out


def _sync(device) -> None:
    """Wait for queued kernels, so that a wall-clock phase on a GPU is the phase's work."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _one_step(trainer, trajs, start: dict, loss_cfg) -> dict:
    """Experience and one optimizer step from the same starting weights; seconds per phase."""
    import torch

    from nemo_craft.losses import policy_loss
    from nemo_craft.trainer.experience import make_experience, micro_batches
    from nemo_craft.trainer.megatron_step import forward_backward

    with torch.no_grad():
        for c in trainer.model:
            for n, p in c.named_parameters():
                p.copy_(start[n])
    exp = make_experience(
        trainer.model,
        trainer.reference,
        trajs,
        loss_cfg,
        pad_id=trainer.tokenizer.pad_id,
        micro_batch_size=trainer.run.trainer.micro_batch_size,
        pad_to_multiple_of=1,
        dp_group=None,
        sample_offset=0,
        device=trainer.device,
    )
    timings = {k.replace("time/", ""): v for k, v in exp.timings.items()}
    state = copy.deepcopy(trainer.controller)
    tensors = {
        "input_ids": exp.input_ids,
        "targets": exp.targets,
        "index": torch.arange(exp.input_ids.shape[0], device=trainer.device),
    }

    def loss_fn(mb, logits):
        sub = exp.batch.select(mb["index"])
        loss, m = policy_loss(
            logits, mb["targets"], sub, loss_cfg, state, tp_group=trainer._tp_group(), num_global_tokens=1
        )
        return loss, sub.loss_mask.sum(), m

    _sync(trainer.device)
    t = time.perf_counter()
    forward_backward(
        trainer.model, micro_batches(tensors, trainer.run.trainer.micro_batch_size), loss_fn, trainer.optimizer
    )
    trainer.optimizer.step()
    _sync(trainer.device)
    timings["train_s"] = time.perf_counter() - t
    return timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu: gloo ranks, CUDA hidden; cuda: NCCL, one GPU per rank",
    )
    args = ap.parse_args()
    import torch

    models = ["tiny"] if args.quick else list(MODELS)
    tps = [1] if args.quick else [1, 2]
    if args.device == "cuda":
        tps = [tp for tp in tps if tp <= torch.cuda.device_count()]
        print(f"device: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}; TP {tps}")
    print(
        f"{'model':<9} {'TP':>2} {'method':<6} {'rollout':>8} {'old':>7} {'teacher':>8} {'ref':>7} "
        f"{'credits':>8} {'train':>7} {'step':>8} {'tok/s':>7}"
    )
    for name in models:
        for tp in tps:
            res = run_distributed(
                _bench, world_size=tp, tp=tp, timeout=3000, args=(MODELS[name], tp, args.repeats), device=args.device
            )[0]
            steps = {}
            for method in ("sdar", "craft"):
                r = res[method]
                step = res["rollout_s"] + sum(r.values())
                steps[method] = (step, r)
                print(
                    f"{name:<9} {tp:>2} {method:<6} {res['rollout_s']:8.2f} {r['old_logprobs_s']:7.2f} "
                    f"{r['teacher_logprobs_s']:8.2f} {r['ref_logprobs_s']:7.2f} {r['credits_s']:8.4f} "
                    f"{r['train_s']:7.2f} {step:8.2f} {res['tokens'] / step:7.0f}"
                )
            (s_sdar, r_sdar), (s_craft, r_craft) = steps["sdar"], steps["craft"]
            own = max(r_craft["credits_s"] - r_sdar["credits_s"], 0.0) + max(
                r_craft["train_s"] - r_sdar["train_s"], 0.0
            )
            print(
                f"{'':<9} {'':>2} CRAFT step / SDAR step = {s_craft / s_sdar:.4f} (target <= 1.02); "
                f"CRAFT's own work (credits + extra loss terms) = {100 * own / s_craft:.2f}% of the step"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
