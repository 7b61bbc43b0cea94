"""Warm start: supervised steps on the environment's privileged plans before RL.

A tiny model trained from scratch knows neither the action format nor how to read a privileged
plan, so CRAFT's teacher (the policy shown the plan) would be no better than the student. The
warm start trains on solver demonstrations, a ``privileged_fraction`` of them shown with the
plan as the system message (the teacher's view) and the rest without (the student's view), in
the same token format as rollouts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nemo_craft.envs import make_env
from nemo_craft.rollout.conversation import ChatFormat
from nemo_craft.rollout.trajectory import Trajectory

__all__ = ["WarmStartConfig", "WarmStartCache", "demonstration", "sft_loss_fn"]


@dataclass
class WarmStartConfig:
    steps: int = 0
    """Supervised steps (0: no warm start)."""
    lr: float = 1e-5
    """Its own peak learning rate (the CPU demo's model, trained from scratch, uses 3e-3)."""
    batch_size: int = 32
    """Demonstrations per step (over all data-parallel ranks)."""
    privileged_fraction: float = 0.5
    """Share of demonstrations whose prompt carries the privileged plan."""
    on_pretrained: bool = False
    """A warm start of pretrained weights (``model.hf_path`` set) fine-tunes them before they
    become pi_ref; it runs only when asked for by name with this flag (see ``check_pretrained``)."""
    cache_dir: Optional[str] = None
    """Keep the warm-started weights here, keyed by everything they depend on, and load them
    instead of training again (a sweep's methods share one warm start per seed). None: off."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"warm_start.steps={self.steps} / batch_size={self.batch_size}: need >= 0 / >= 1")
        if not 0.0 <= self.privileged_fraction <= 1.0:
            raise ValueError(f"warm_start.privileged_fraction={self.privileged_fraction}: must be in [0, 1]")

    def check_pretrained(self, hf_path: Optional[str]) -> None:
        """Refuse a warm start of a pretrained model unless ``on_pretrained`` asks for it."""
        if self.steps and hf_path and not self.on_pretrained:
            raise ValueError(
                f"trainer.warm_start.steps={self.steps} with model.hf_path={hf_path}: a warm start fine-tunes the "
                "pretrained weights (and they become pi_ref); set trainer.warm_start.steps=0, or ask for it with "
                "trainer.warm_start.on_pretrained=true"
            )


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

    from nemo_craft.parallel.vocab_parallel import vocab_parallel_token_stats

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

    def __init__(self, cache_dir: str, cfg, world_size: int, rank: int):
        from omegaconf import OmegaConf

        resolved = OmegaConf.to_container(cfg, resolve=True)
        # The whole trainer section (optimizer settings, micro-batch split, ...), conservatively:
        # a needless miss costs one warm start, a wrong hit would cost the run.
        trainer = dict(resolved["trainer"])
        trainer["warm_start"] = {k: v for k, v in trainer["warm_start"].items() if k != "cache_dir"}
        rollout = resolved.get("rollout", {})
        what = {k: resolved.get(k) for k in self._KEY_SECTIONS}
        what.update(
            trainer=trainer,
            seed=resolved.get("seed"),
            world_size=world_size,
            chat={k: rollout.get(k) for k in ("system_prompt", "observation_message")},
            # the CPU thread count sets the order of the sums
            threads=None if torch.cuda.is_available() else torch.get_num_threads(),
        )
        digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / digest
        self.path = self.dir / f"rank{rank:05d}.pt"

    def load(self, model_chunks) -> bool:
        """Copy the cached weights into ``model_chunks``; False when there are none."""
        from nemo_craft.trainer.reference import named_tensors

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
        from nemo_craft.trainer.reference import named_tensors

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({name: t.detach().cpu() for name, t in named_tensors(model_chunks)}, tmp)
        os.replace(tmp, self.path)
