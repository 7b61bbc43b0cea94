"""Warm start: supervised steps on the environment's privileged plans before RL.

A tiny model trained from scratch knows neither the action format nor how to read a privileged
plan, so CRAFT's teacher (the policy shown the plan) would be no better than the student. The
warm start trains on solver demonstrations, a ``privileged_fraction`` of them shown with the
plan as the system message (the teacher's view) and the rest without (the student's view), in
the same token format as rollouts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from megatron.core import parallel_state as ps

from nemo_craft.envs import make_env
from nemo_craft.parallel.ddp import build_optimizer
from nemo_craft.parallel.vocab_parallel import vocab_parallel_token_stats
from nemo_craft.rollout.conversation import ChatFormat
from nemo_craft.rollout.trajectory import Trajectory, collate_trajectories
from nemo_craft.runtime.reference import named_tensors
from nemo_craft.seeds import WARM_START_FIRST_TASK
from nemo_craft.trainer.experience import micro_batches
from nemo_craft.trainer.megatron_step import forward_backward

if TYPE_CHECKING:
    from nemo_craft.config import RunConfig

__all__ = ["WarmStartCache", "demonstration", "sft_loss_fn", "warm_start_steps"]


def demonstration(
    env, fmt: ChatFormat, tokenizer, seed: int, *, privileged: bool, observation_message: str = "observation"
) -> Trajectory:
    """The expert's episode on task ``seed`` as a Trajectory (action tokens in the loss mask)."""
    _, priv, _ = env.reset(seed)
    prompt = env.render_prompt()
    tr = Trajectory(task_seed=seed, group_id=0, sibling_index=0)
    ids = fmt.teacher_prompt_ids(prompt, env.render_privileged(priv)) if privileged else fmt.prompt_ids(prompt)
    tr.append(ids)
    tr.prompt_length = len(ids)
    end_of_turn = tokenizer.stop_ids[0]
    for turn, action in enumerate(env.expert_actions()):
        # The end-of-turn token is part of the action, as when the policy samples it: the model
        # learns to stop (an action without tags has no stop string to end it).
        action_ids = tokenizer.encode(action) + [end_of_turn]
        tr.append(action_ids, turn=turn, logprobs=[0.0] * len(action_ids))
        obs, reward, done, info = env.step(action)
        tr.reward += reward
        if done:
            tr.success = bool(info.get("success", False))
            break
        user = obs if observation_message == "observation" else env.render_prompt()
        tr.append(fmt.continuation_ids(action_ids, user))
    return tr


def demonstrations(
    env_name: str,
    env_kwargs: dict,
    fmt: ChatFormat,
    tokenizer,
    seeds: Sequence[int],
    privileged_fraction: float,
    observation_message: str,
) -> list[Trajectory]:
    env = make_env(env_name, **env_kwargs)
    try:
        n_priv = round(len(seeds) * privileged_fraction)
        return [
            demonstration(env, fmt, tokenizer, s, privileged=i < n_priv, observation_message=observation_message)
            for i, s in enumerate(seeds)
        ]
    finally:
        env.close()


def sft_loss_fn(chunk_size: int, vocab_size: Optional[int] = None):
    """Summed negative log-likelihood of the action tokens (megatron_step's 3-tuple contract)."""
    from megatron.core import parallel_state as ps

    def loss_fn(mb: dict, logits: torch.Tensor):
        mask = mb["loss_mask"]
        stats = vocab_parallel_token_stats(
            logits,
            mb["targets"],
            mask,
            tp_group=ps.get_tensor_model_parallel_group(),
            chunk_size=chunk_size,
            vocab_size=vocab_size,
        )
        return -stats.logp.sum(), mask.sum(), {}

    return loss_fn


class WarmStartCache:
    """The warm-started weights of each rank, keyed by a hash of everything they depend on:
    the model, the environment and its settings, the layout and world size, the tokenizer and
    chat format, the trainer's settings (the warm start's and the optimizer's), the seed (which
    draws the initial weights) and, on the CPU, the thread count.
    The warm start draws no random numbers, so loading is bit-identical to training again."""

    _KEY_SECTIONS = ("model", "env", "parallel")

    def __init__(self, cache_dir: str, run: RunConfig, world_size: int, rank: int):
        # The whole trainer section (optimizer settings, micro-batch split, ...), conservatively:
        # a needless miss costs one warm start, a wrong hit would cost the run.
        trainer = dataclasses.asdict(run.trainer)
        trainer["warm_start"].pop("cache_dir")
        what = {
            "model": dataclasses.asdict(run.model),
            "env": {"name": run.env.name, "config": dataclasses.asdict(run.env.config)},
            "parallel": dataclasses.asdict(run.parallel),
            "trainer": trainer,
            "seed": run.seed,
            "world_size": world_size,
            "chat": {
                "system_prompt": run.rollout.system_prompt,
                "observation_message": run.rollout.observation_message,
            },
            # the CPU thread count sets the order of the sums
            "threads": None if torch.cuda.is_available() else torch.get_num_threads(),
        }
        digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / digest
        self.path = self.dir / f"rank{rank:05d}.pt"

    def load(self, model_chunks) -> bool:
        """Copy the cached weights into ``model_chunks``; False when there are none."""
        if not self.path.exists():
            return False
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, t in named_tensors(model_chunks):
                if name not in state or state[name].shape != t.shape:
                    raise ValueError(
                        f"warm-start cache {self.path} does not match the model at {name!r}; "
                        "delete it or set trainer.warm_start.cache_dir to another directory"
                    )
                t.copy_(state[name])
        return True

    def save(self, model_chunks) -> None:
        """Write atomically (temporary name, then rename): a killed run leaves no partial file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({name: t.detach().cpu() for name, t in named_tensors(model_chunks)}, tmp)
        os.replace(tmp, self.path)


def warm_start_steps(model, run: RunConfig, tokenizer, *, vocab_size: int, dp_size: int, device, log) -> None:
    """``trainer.warm_start.steps`` supervised steps on the environment's demonstrations, with an
    optimizer of their own (RL builds its own afterwards); ``log(metrics)`` after each step."""
    ws, trainer = run.trainer.warm_start, run.trainer
    optimizer, _ = build_optimizer(model, trainer.optim_for(ws.lr), run.parallel, ws.steps)
    fmt = ChatFormat(tokenizer, system_prompt=run.rollout.system_prompt, end_of_turn_ids=tokenizer.stop_ids)
    per_rank = ws.batch_size // dp_size
    mbs_size = math.gcd(per_rank, trainer.micro_batch_size)
    env_cfg = dataclasses.asdict(run.env.config)
    for s in range(ws.steps):
        first = WARM_START_FIRST_TASK + (s * dp_size + ps.get_data_parallel_rank()) * per_rank
        demos = demonstrations(
            run.env.name,
            env_cfg,
            fmt,
            tokenizer,
            list(range(first, first + per_rank)),
            ws.privileged_fraction,
            run.rollout.observation_message,
        )
        sb = collate_trajectories(demos, pad_id=tokenizer.pad_id, pad_to_multiple_of=run.parallel.sequence_multiple)
        tensors = {
            "input_ids": sb.input_ids.to(device),
            "targets": sb.targets.to(device),
            "loss_mask": sb.loss_mask.to(device),
        }
        loss, _ = forward_backward(
            model, micro_batches(tensors, mbs_size), sft_loss_fn(run.loss.chunk_size, vocab_size), optimizer
        )
        optimizer.step()
        log({"warm_start/nll": loss.item(), "warm_start/step": s + 1}, s + 1, ws.steps)
