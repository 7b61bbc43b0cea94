"""Roll out an evaluation split with a checkpoint (``nemo-craft evaluate``).

    run, ckpt = load_eval_run(["checkpoint.resume=outputs/craft_sokoban_seed1/checkpoints"])
    ev = Evaluator(run, "test", n_tasks=64)
    result = ev.run()            # every rank; the full result on every rank
    ev.close()

``nemo_craft.config.load_eval_run`` says where the run config comes from (the checkpoint's, with the
command line on top). Only what generation needs is built: the model chunks, the tokenizer, the
generator and the episode runner; no optimizer, no reference copy. Tasks are spread over
data-parallel ranks (``seeds[dp_rank::dp_size]``); episodes are gathered over the data-parallel group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch.distributed as dist

from nemo_craft.eval.metrics import episode_record, markdown_summary, summarize
from nemo_craft.eval.splits import split_spec
from nemo_craft.runtime.policy_stack import PolicyStack, load_checkpoint_weights

if TYPE_CHECKING:
    from nemo_craft.config import RunConfig

__all__ = ["Evaluator", "write_results"]


class Evaluator:
    """Builds the policy and the environments of ``cfg`` and rolls out one split."""

    def __init__(self, run: RunConfig, split: str, *, n_tasks: Optional[int] = None, init_method: Optional[str] = None):
        """``run`` comes validated (``load_eval_run``); the split and the task count are checked here."""
        self.run_cfg = run
        self.split = split_spec(run.env_name, split)
        self.n_tasks = int(n_tasks if n_tasks is not None else run.trainer.val_tasks)
        if self.n_tasks < 1:
            raise ValueError(f"--tasks {self.n_tasks}: evaluate at least one task")
        self.env_changes = {}
        if self.split.env_split is not None:
            if not hasattr(run.env.config, "split"):
                raise ValueError(f"environment {run.env_name!r} has no 'split' setting for split {split!r}")
            self.env_changes["split"] = self.split.env_split
            run.env.factory(**self.env_changes)  # the engine and that split's data, before any process group
        self._init_method = init_method
        self.step: Optional[int] = None

    def setup(self) -> None:
        run = self.run_cfg
        stack = PolicyStack.build(run, seed=run.seed, init_method=self._init_method, for_training=False)
        self.dp_size, self.dp_rank, self.dp_group, self.rank = stack.dp_size, stack.dp_rank, stack.dp_group, stack.rank
        self.chunks, self.tokenizer = stack.chunks, stack.tokenizer
        self.step = load_checkpoint_weights(run.checkpoint, self.chunks)
        for chunk in self.chunks:
            chunk.eval()
        self.runner = stack.start_episodes(run, env_changes=self.env_changes, validation=True)

    def run(self) -> dict[str, Any]:
        """Roll out the split; the result (summary and episodes) on every rank."""
        if not hasattr(self, "runner"):
            self.setup()
        seeds = self.split.seeds(self.n_tasks, val_seed_offset=self.run_cfg.trainer.val_seed_offset)
        mine = seeds[self.dp_rank :: self.dp_size]
        trajs = self.runner.run(mine, seed=self.run_cfg.seed, group_size=1, validation=True) if mine else []
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
            "env_split": self.env_changes.get("split", getattr(self.run_cfg.env.config, "split", None)),
            "first_seed": seeds[0],
            "n_tasks": len(seeds),
            "checkpoint": self.run_cfg.checkpoint.resume,
            "step": self.step,
            "temperature": self.run_cfg.rollout.validation.temperature,
            "sampling_seed": self.run_cfg.seed,
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
