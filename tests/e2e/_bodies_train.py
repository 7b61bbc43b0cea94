"""Rank bodies for the end-to-end training tests."""

import json

import numpy as np

SMALL = [
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "trainer.micro_batch_size=2",
    "rollout.generation.max_new_tokens=8",
    "rollout.max_tokens_per_episode=24",
    "env.config.max_turns=3",
    "env.config.template=compact",
    "env.config.history_length=0",
    "trainer.val_tasks=2",
    "trainer.val_every=0",
    "logging.progress_bar=false",
    "logging.plot=false",
    "trainer.warm_start.steps=0",
]


class Killed(Exception):
    pass


def train(
    run_dir: str,
    overrides: list,
    parallel: dict | None = None,
    kill_at_step: int | None = None,
    old_pass: bool | None = None,
):
    """Run ``nemo-craft train`` in this rank; return the parameters (numpy) and the metrics rows.
    ``kill_at_step``: the process dies in the middle of that step (after its rollouts).
    ``old_pass``: force (True) or skip (False) the old-log-prob pass (``make_experience``)."""
    import functools

    from megatron.core import parallel_state as ps

    from nemo_craft.config import load_run
    from nemo_craft.trainer import experience
    from nemo_craft.trainer import trainer as trainer_mod

    if old_pass is not None:  # the trainer module's make_experience is what train_step calls
        trainer_mod.make_experience = functools.partial(experience.make_experience, old_pass=old_pass)
    passes = []  # the no-grad log-prob passes of make_experience
    real_forward_only = experience.forward_only

    def forward_only(*a, **k):
        passes.append(1)
        return real_forward_only(*a, **k)

    experience.forward_only = forward_only

    extra = [f"parallel.{k}={v}" for k, v in (parallel or {}).items()]
    trainer = trainer_mod.RLTrainer(load_run(SMALL + [f"run_dir={run_dir}"] + extra + list(overrides)))
    if kill_at_step is not None:
        real_step = trainer.train_step

        def train_step():
            if trainer.step + 1 == kill_at_step:
                trainer.runner.run([0], seed=0)  # some work, then the kill
                raise Killed()
            return real_step()

        trainer.train_step = train_step
    try:
        trainer.fit()
    except Killed:
        pass
    params = {
        f"{i}.{n}": p.detach().float().cpu().numpy().copy()
        for i, c in enumerate(trainer.model)
        for n, p in c.named_parameters()
    }
    rows = []
    if ps.get_data_parallel_rank() == 0 and trainer.rank == 0:
        rows = [json.loads(line) for line in open(trainer.logger.jsonl_path)]
    return {"params": params, "rows": rows, "step": trainer.step, "logprob_passes": len(passes)}


def nan_loss_run(run_dir: str, overrides: list):
    """Train with a loss poisoned to NaN: steps are skipped and counted, then the run stops."""
    from nemo_craft.config import load_run
    from nemo_craft.trainer import step as step_mod
    from nemo_craft.trainer import trainer as trainer_mod

    run = load_run(SMALL + [f"run_dir={run_dir}"] + list(overrides))
    real = step_mod.policy_loss

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * float("nan"), metrics

    step_mod.policy_loss = poisoned  # what the training pass's loss function calls
    t = trainer_mod.RLTrainer(run)
    try:
        t.fit()
    except trainer_mod.NonFiniteLossError as err:
        return {
            "error": str(err),
            "nan_steps": t.update.nan_steps,
            "step": t.step,
            "params_finite": all(np.isfinite(p.detach().numpy()).all() for c in t.model for p in c.parameters()),
        }
    return {"error": None}


def nan_grad_run(run_dir: str, overrides: list, parallel: dict | None = None):
    """Train with gradients poisoned to NaN while the loss stays finite: every update is skipped
    (weights and optimizer state untouched), counted, and the run stops after max_nan_steps."""
    import torch

    from nemo_craft.config import load_run
    from nemo_craft.trainer import step as step_mod
    from nemo_craft.trainer import trainer as trainer_mod

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, g):
            return torch.full_like(g, float("nan"))

    real = step_mod.policy_loss

    def poisoned(logits, *args, **kwargs):
        return real(NanGrad.apply(logits), *args, **kwargs)

    step_mod.policy_loss = poisoned  # what the training pass's loss function calls
    extra = [f"parallel.{k}={v}" for k, v in (parallel or {}).items()]
    t = trainer_mod.RLTrainer(load_run(SMALL + [f"run_dir={run_dir}"] + extra + list(overrides)))
    real_setup = t.setup
    initial = {}

    def setup():
        real_setup()
        initial.update({n: p.detach().clone() for n, p in t.model[0].named_parameters()})

    t.setup = setup
    error = None
    try:
        t.fit()
    except trainer_mod.NonFiniteLossError as err:
        error = str(err)
    rows = [json.loads(line) for line in open(t.logger.jsonl_path)] if t.rank == 0 else []
    inner = [o.optimizer for o in getattr(t.optimizer, "chained_optimizers", [t.optimizer])]
    return {
        "error": error,
        "nan_steps": t.update.nan_steps,
        "step": t.step,
        "rows": rows,
        "unchanged": all(torch.equal(initial[n], p) for n, p in t.model[0].named_parameters()),
        "optimizer_state": sum(len(o.state) for o in inner),
    }


def train_with_rollout_offset(run_dir: str, overrides: list, offset: float):
    """``train`` with the sampler's log-probs of its action tokens shifted by ``offset``, as an
    engine that was not refit would report them: ``rollout/logprob_diff_*`` must show the shift."""
    import dataclasses

    import torch

    from nemo_craft.trainer import experience

    real_collate = experience.collate_trajectories

    def collate(*args, **kwargs):
        sb = real_collate(*args, **kwargs)
        shifted = torch.where(sb.loss_mask, sb.rollout_logprobs + offset, sb.rollout_logprobs)
        return dataclasses.replace(sb, rollout_logprobs=shifted)

    experience.collate_trajectories = collate
    return train(run_dir, overrides)
