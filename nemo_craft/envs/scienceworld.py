"""ScienceWorld (``pip install scienceworld``, Java 17): 30 science tasks with fixed variations.

A seed picks (task, variation): task = tasks[seed % #tasks], variation = the split's variations of
that task at (seed // #tasks) % #variations, so train / dev / test seeds never share a variation.
The privileged context is ScienceWorld's gold action sequence (``generateGoldPath=True``). The
instance and its transitions are fixed by the seed; for a few tasks ScienceWorld draws the gold
path at random among equivalent ones (e.g. which non-living thing to focus on): the first drawn is
kept for the process, so another process may see another (equally valid) plan. Reward per
step is the change of the task score / 100 (an episode sums to its final score in [-1, 1]); success
is a score of 100. Each environment owns one ScienceWorld JVM (started at construction, ~1.5 s).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nemo_craft.envs.base import EnvConfig, TextEnv, check_positive
from nemo_craft.envs.prompts import PromptTemplate

_UNKNOWN = ("No known action matches that input.", "Unknown action")
# ScienceWorld draws some gold paths at random (e.g. which non-living thing a find-task focuses
# on); the first one drawn for an instance is kept, so a process sees one privileged context.
_GOLD: dict[tuple[str, int, str], list[str]] = {}
_SPLITS = ("train", "dev", "test")


@dataclasses.dataclass
class ScienceWorldConfig(EnvConfig):
    """ScienceWorld settings."""

    max_turns: int = 100
    tasks: tuple[str, ...] = ()
    """Task names (``scienceworld.ScienceWorldEnv().get_task_names()``); empty: all 30."""
    split: str = "train"
    """Variation split: "train", "dev" or "test" (ScienceWorld's own)."""
    simplifications: str = "easy"
    """ScienceWorld simplification string ("easy", "" for none, or a comma list)."""
    list_admissible: bool = False
    """Put the valid actions in info/prompt (hundreds of strings; slows each step)."""
    engine_step_limit: int = 1000
    require_action_tags: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tasks = tuple(self.tasks)
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {self.split!r}")
        check_positive("engine_step_limit", self.engine_step_limit)


SCIENCEWORLD_PROMPT = PromptTemplate(
    task=(
        "You are an expert agent in ScienceWorld, a text-based virtual laboratory. Your task is "
        "to: {task}\nYou act with short text commands such as 'look around', 'open door to "
        "kitchen', 'go to kitchen', 'pick up thermometer', 'focus on water', 'use thermometer on "
        "water', 'wait1'."
    ),
    compact_header="sci: {task}",
    privileged_intro="A gold action sequence that completes this task from the start:",
    compact_privileged_intro="gold: ",
)


class ScienceWorldEnv(TextEnv):
    """ScienceWorld behind the project's interface; privileged: the gold action sequence."""

    name = "scienceworld"
    config_cls = ScienceWorldConfig

    def __init__(self, config: ScienceWorldConfig | None = None) -> None:
        super().__init__(config)
        try:
            from scienceworld import ScienceWorldEnv as Engine
        except ImportError as err:
            raise ImportError(
                "the scienceworld environment needs `pip install scienceworld` and Java 17"
            ) from err
        self._engine = Engine("", envStepLimit=self.config.engine_step_limit)
        all_tasks = list(self._engine.get_task_names())
        unknown = sorted(set(self.config.tasks) - set(all_tasks))
        if unknown:
            raise ValueError(f"unknown ScienceWorld task(s) {unknown}; known: {all_tasks}")
        self.task_names = sorted(self.config.tasks or all_tasks)
        self._variations: dict[str, list[int]] = {}
        self.gold: list[str] = []
        self.task_text = ""
        self.score = 0
        self.completed = False

    def instance(self, seed: int) -> tuple[str, int]:
        """(task name, variation) of ``seed`` in the configured split."""
        task = self.task_names[seed % len(self.task_names)]
        if task not in self._variations:
            self._engine.load(task, 0, self.config.simplifications)
            getter = {
                "train": self._engine.get_variations_train,
                "dev": self._engine.get_variations_dev,
                "test": self._engine.get_variations_test,
            }[self.config.split]
            self._variations[task] = sorted(getter())
        variations = self._variations[task]
        return task, variations[(seed // len(self.task_names)) % len(variations)]

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        task, variation = self.instance(seed)
        self._engine.load(task, variation, self.config.simplifications, generateGoldPath=True)
        observation, info = self._engine.reset()
        key = (task, variation, self.config.simplifications)
        self.gold = _GOLD.setdefault(key, list(self._engine.get_gold_action_sequence()))
        self.task_text = self._engine.get_task_description()
        self.score, self.completed = 0, False
        self._valid = info.get("valid", [])
        privileged = "\n".join(f"{k + 1}. {a}" for k, a in enumerate(self.gold))
        return observation, privileged, {"task": task, "variation": variation}

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        observation, _, done, info = self._engine.step(action)
        if observation.strip().startswith(_UNKNOWN):
            return observation, 0.0, False, {"invalid": True}
        score = int(info.get("score", 0))
        reward = (score - self.score) / 100.0
        self.score = score
        self.completed = score >= 100
        self._valid = info.get("valid", [])
        return observation, reward, bool(done or self.completed or score < 0), {"raw_score": score}

    def parse_action(self, text: str) -> str | None:
        inner = self.action_body(text)
        if inner is None:
            return None
        action = " ".join(inner.split()).lower()
        return action or None

    def prompt_template(self) -> PromptTemplate:
        return SCIENCEWORLD_PROMPT

    def task_description(self) -> str:
        return self.task_text

    def expert_actions(self) -> list[str]:
        return [f"<action>{a}</action>" for a in self.gold]

    def _admissible(self) -> list[str]:
        return list(self._valid) if self.config.list_admissible else []

    def _progress(self) -> tuple[bool, float]:
        return self.completed, max(0.0, min(1.0, self.score / 100.0))

    def close(self) -> None:
        self._engine.close()
