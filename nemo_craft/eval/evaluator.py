"""Roll out an evaluation split with a checkpoint (``nemo-craft evaluate``).

    cfg, ckpt = eval_config(["checkpoint.resume=outputs/craft_sokoban_seed1/checkpoints"])
    ev = Evaluator(cfg, "test", n_tasks=64)
    result = ev.run()            # every rank; the full result on every rank
    ev.close()

The run's config comes from the checkpoint (its ``config.yaml``: the resolved config it was
trained with), with the command line's overrides on top: ``key=value`` replaces that key, a
group choice (``env=``, ``model=``, ``method=``, ``parallel=``, ``cluster=``) replaces the whole
section. Without a checkpoint the config is composed from ``conf/`` as for training and the
model starts from its initial (or ``model.hf_path``) weights.

Only what generation needs is built: the model chunks, the tokenizer, the generator and the
episode runner; no optimizer, no reference copy. Tasks are spread over data-parallel ranks
(``seeds[dp_rank::dp_size]``); episodes are gathered over the data-parallel group.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_craft.config import RunConfig, compose, rollout_config, to_dataclass
from nemo_craft.eval.metrics import episode_record, markdown_summary, summarize
from nemo_craft.eval.splits import split_spec

__all__ = ["eval_config", "Evaluator", "write_results"]

# group name on the command line -> the config section it fills (and top-level names derived from it)
_GROUP_SECTIONS = {
    "model": ("model",),
    "env": ("env", "env_name"),
    "method": ("loss", "method_name"),
    "parallel": ("parallel",),
    "cluster": ("cluster",),
}


def _override_key(override: str) -> str:
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key=value")
    return override.split("=", 1)[0].lstrip("+~")


def _resume_path(overrides: Sequence[str]) -> Optional[str]:
    paths = [o.split("=", 1)[1] for o in overrides if _override_key(o) == "checkpoint.resume"]
    path = paths[-1] if paths else None
    return None if path in (None, "", "null", "None") else path


def eval_config(overrides: Sequence[str]):
    """(config, checkpoint info or None) of an evaluation: see the module docstring."""
    from nemo_craft.trainer.checkpoint import CONFIG_YAML
    from nemo_craft.trainer.checkpoint_layout import resolve_checkpoint

    overrides = list(overrides)
    composed = compose(overrides)
    path = _resume_path(overrides)
    if path == "auto":
        raise ValueError(
            "evaluate: checkpoint.resume=auto has no run to look in; pass a checkpoint path "
            "(a step_<n> directory, or a run's checkpoints directory for its newest)"
        )
    info = resolve_checkpoint(None, path) if path is not None else None
    cfg = composed
    if info is not None and (info.path / CONFIG_YAML).is_file():
        cfg = OmegaConf.create((info.path / CONFIG_YAML).read_text())
        for o in overrides:
            key = _override_key(o)
            if key == "recipe":
                raise ValueError(
                    "evaluate with a checkpoint takes the run's config from the checkpoint; a recipe "
                    "is not applied on top of it: override the sections to change (e.g. parallel=dp)"
                )
            with open_dict(cfg):
                for section in _GROUP_SECTIONS.get(key, (key,)):
                    OmegaConf.update(cfg, section, OmegaConf.select(composed, section), merge=False)
    with open_dict(cfg):
        cfg.checkpoint.resume = str(info.path) if info is not None else None
        cfg.checkpoint.dir = None
        cfg.checkpoint.save_every = 0
    return cfg, info


class Evaluator:
    """Builds the policy and the environments of ``cfg`` and rolls out one split."""

    def __init__(
        self, cfg: DictConfig, split: str, *, n_tasks: Optional[int] = None, init_method: Optional[str] = None
    ):
        from nemo_craft.envs import env_factory
        from nemo_craft.trainer.trainer import TrainerConfig

        self.cfg = cfg
        self.run_cfg = RunConfig.from_omegaconf(cfg)
        self.run_cfg.parallel.check_generation()
        self.run_cfg.model.validate_layout(self.run_cfg.parallel)
        from nemo_craft.rollout.backends import check_run

        check_run(rollout_config(cfg).backend, self.run_cfg.parallel, self.run_cfg.model)
        self.tcfg = to_dataclass(TrainerConfig, cfg.trainer, "trainer")
        self.split = split_spec(self.run_cfg.env_name, split)
        self.n_tasks = int(n_tasks if n_tasks is not None else self.tcfg.val_tasks)
        if self.n_tasks < 1:
            raise ValueError(f"--tasks {self.n_tasks}: evaluate at least one task")
        self.env_cfg = dict(self.run_cfg.env_kwargs.get("config", {}))
        if self.split.env_split is not None:
            if "split" not in self.env_cfg:
                raise ValueError(f"environment {self.run_cfg.env_name!r} has no 'split' setting for split {split!r}")
            self.env_cfg["split"] = self.split.env_split
        env_factory(self.run_cfg.env_name, **self.env_cfg)  # the engine and its data, before any process group
        self._init_method = init_method
        self.step: Optional[int] = None

    def setup(self) -> None:
        from nemo_craft.trainer.checkpoint import CheckpointConfig
        from nemo_craft.trainer.policy_stack import PolicyStack, load_checkpoint_weights

        run = self.run_cfg
        stack = PolicyStack.build(run, seed=int(self.cfg.seed), init_method=self._init_method, for_training=False)
        self.dp_size, self.dp_rank, self.dp_group, self.rank = stack.dp_size, stack.dp_rank, stack.dp_group, stack.rank
        self.rollout_cfg = rollout_config(self.cfg)
        self.chunks, self.tokenizer = stack.chunks, stack.tokenizer
        self.step = load_checkpoint_weights(
            to_dataclass(CheckpointConfig, self.cfg.checkpoint, "checkpoint"), self.chunks
        )
        for chunk in self.chunks:
            chunk.eval()
        self.runner = stack.start_episodes(run, self.rollout_cfg, self.env_cfg, validation=True)

    def run(self) -> dict[str, Any]:
        """Roll out the split; the result (summary and episodes) on every rank."""
        import torch.distributed as dist

        if not hasattr(self, "runner"):
            self.setup()
        seeds = self.split.seeds(self.n_tasks, val_seed_offset=self.tcfg.val_seed_offset)
        mine = seeds[self.dp_rank :: self.dp_size]
        trajs = self.runner.run(mine, seed=int(self.cfg.seed), group_size=1, validation=True) if mine else []
        local = [episode_record(t) for t in trajs]
        gathered: list = [None] * self.dp_size
        if self.dp_size > 1:
            dist.all_gather_object(gathered, local, group=self.dp_group)
        else:
            gathered = [local]
        order = {s: i for i, s in enumerate(seeds)}
        episodes = sorted((e for part in gathered for e in part), key=lambda e: order[e["task_seed"]])
        return {
            "env": self.run_cfg.env_name,
            "method": self.run_cfg.loss.name,
            "split": self.split.name,
            "env_split": self.env_cfg.get("split"),
            "first_seed": seeds[0],
            "n_tasks": len(seeds),
            "checkpoint": self.cfg.checkpoint.resume,
            "step": self.step,
            "temperature": self.rollout_cfg.val_temperature,
            "sampling_seed": int(self.cfg.seed),
            "summary": summarize(episodes, self.run_cfg.env_name),
            "episodes": episodes,
        }

    def close(self) -> None:
        if hasattr(self, "runner"):
            self.runner.close()


def write_results(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``results.json`` (everything but the episodes), ``episodes.jsonl`` and ``results.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "episodes": out / "episodes.jsonl", "markdown": out / "results.md"}
    head = {k: v for k, v in result.items() if k != "episodes"}
    paths["json"].write_text(json.dumps(head, indent=1) + "\n")
    paths["episodes"].write_text("".join(json.dumps(e) + "\n" for e in result["episodes"]))
    paths["markdown"].write_text(markdown_summary(result))
    return paths
