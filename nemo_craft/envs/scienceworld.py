"""ScienceWorld (``pip install scienceworld``, Java 17): 30 science tasks with fixed variations.

A seed picks (task, variation): task = tasks[seed % #tasks], variation = the split's variations of
that task at (seed // #tasks) % #variations, so train / dev / test seeds never share a variation.
Turn limits are per task: ``max_turns``, raised for the tasks whose gold action sequences need
more (with ``PLAN_MARGIN`` to spare) up to ``turn_cap``; the few variations whose sequence does not
fit even ``turn_cap`` are left out of every split (``nemo-craft envs limits scienceworld`` lists
the limits and counts). The plan lengths come from a table shipped with the package
(``scienceworld_plan_lengths``), so seeds, limits and splits are known without the engine.
The privileged context is ScienceWorld's gold action sequence (``generateGoldPath=True``). The
instance and its transitions are fixed by the seed; for a few tasks ScienceWorld draws the gold
path at random among equivalent ones (e.g. which non-living thing to focus on): the first drawn is
kept for the process, so another process may see another (equally valid) plan. Reward per
step is the change of the task score / 100 (an episode sums to its final score in [-1, 1]); success
is a score of 100. Each environment owns one ScienceWorld JVM (started at construction, ~1.5 s).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

from nemo_craft.envs import scienceworld_plan_lengths as plans
from nemo_craft.envs.base import EnvConfig, TextEnv, check_positive
from nemo_craft.envs.prompts import PromptTemplate
from nemo_craft.envs.spec import SCORE_MEAN, SUCCESS_RATE, EvalSplit, PaperMetric

_UNKNOWN = ("No known action matches that input.", "Unknown action")
# ScienceWorld draws some gold paths at random (e.g. which non-living thing a find-task focuses
# on); the first one drawn for an instance is kept, so a process sees one privileged context.
_GOLD: dict[tuple[str, int, str], list[str]] = {}
_SPLITS = ("train", "dev", "test")

PLAN_MARGIN = 1.25
"""A gold action sequence must fit its task's turn limit with this factor to spare: ScienceWorld
draws some sequences at random (one variation's lengths differ by up to ~15% between draws, and
the table holds one draw), and a student shown the plan still loses a few turns to slips."""


@dataclasses.dataclass
class ScienceWorldConfig(EnvConfig):
    """ScienceWorld settings."""

    max_turns: int = 100
    """Turn limit of the tasks whose gold action sequences fit it (with ``PLAN_MARGIN``); the
    others get a limit of their own (``task_turn_limit``)."""
    turn_cap: int = 300
    """Largest per-task turn limit. Variations whose gold sequence (with ``PLAN_MARGIN``) exceeds
    it are left out of every split. ``max_turns``: one limit for all tasks; 0: no per-task limits
    and nothing left out (a flat ``max_turns`` budget: longer sequences cannot complete)."""
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
        unknown = sorted(set(self.tasks) - set(plans.PLAN_LENGTHS))
        if unknown:
            raise ValueError(f"unknown ScienceWorld task(s) {unknown}; known: {sorted(plans.PLAN_LENGTHS)}")
        self._check_turn_cap()

    def _check_turn_cap(self) -> None:
        """Per-task limits rest on plan lengths measured with one simplification setting."""
        if self.turn_cap == 0:
            return
        if not isinstance(self.turn_cap, int) or self.turn_cap < self.max_turns:
            raise ValueError(
                f"turn_cap must be 0 (no per-task limits) or an int >= max_turns={self.max_turns}, "
                f"got {self.turn_cap!r}"
            )
        if self.simplifications != plans.SIMPLIFICATIONS:
            raise ValueError(
                f"per-task turn limits are measured with simplifications={plans.SIMPLIFICATIONS!r}, "
                f"got {self.simplifications!r}: set turn_cap=0 (one max_turns for all tasks) or "
                "measure the plans with scripts/scienceworld_plan_lengths.py --simplifications"
            )


def plan_lengths(task: str) -> tuple[int, ...]:
    """Gold action sequence length of each variation of ``task`` (index = variation number)."""
    return plans.PLAN_LENGTHS[task]


def turns_needed(plan_length: int) -> int:
    """Turns a plan of ``plan_length`` steps needs with ``PLAN_MARGIN``, rounded up to ten."""
    return math.ceil(plan_length * PLAN_MARGIN / 10) * 10


@functools.cache
def _drawn(task: str, split: str, turn_cap: int) -> tuple[int, ...]:
    """``split_variations`` by value, cached: every reset maps its seed through it."""
    start, stop = plans.SPLIT_RANGES[task][split]
    if turn_cap == 0:
        return tuple(range(start, stop))
    lengths = plan_lengths(task)
    return tuple(v for v in range(start, stop) if turns_needed(lengths[v]) <= turn_cap)


def split_variations(task: str, config: ScienceWorldConfig) -> tuple[int, ...]:
    """The variations of ``task`` that seeds draw in the configured split: ScienceWorld's own,
    less those whose gold sequence does not fit ``turn_cap``."""
    return _drawn(task, config.split, config.turn_cap)


def task_turn_limit(task: str, config: ScienceWorldConfig) -> int:
    """Turns an episode of ``task`` may take: ``max_turns``, raised to what the longest gold
    sequence among its drawn variations (of every split) needs."""
    if config.turn_cap == 0:
        return config.max_turns
    needed = (turns_needed(n) for n in plan_lengths(task))
    return max([config.max_turns] + [n for n in needed if n <= config.turn_cap])


def task_names(config: ScienceWorldConfig) -> list[str]:
    """The configured tasks in seed order (sorted)."""
    return sorted(config.tasks or plans.PLAN_LENGTHS)


def instance_of(seed: int, config: ScienceWorldConfig) -> tuple[str, int]:
    """(task, variation) that ``seed`` draws under ``config``; needs no engine."""
    tasks = task_names(config)
    task = tasks[seed % len(tasks)]
    variations = split_variations(task, config)
    if not variations:
        start, stop = plans.SPLIT_RANGES[task][config.split]
        shortest = min(plan_lengths(task)[start:stop])
        raise ValueError(
            f"ScienceWorld task {task!r} has no {config.split} variation whose gold sequence fits "
            f"turn_cap={config.turn_cap}; raise turn_cap to >= {turns_needed(shortest)} or leave "
            "the task out of `tasks`"
        )
    return task, variations[(seed // len(tasks)) % len(variations)]


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


def _split_counts(task: str, config: ScienceWorldConfig) -> dict[str, tuple[int, int]]:
    """Split -> (variations drawn, variations ScienceWorld has) of ``task``."""
    counts = {}
    for split in _SPLITS:
        start, stop = plans.SPLIT_RANGES[task][split]
        drawn = split_variations(task, dataclasses.replace(config, split=split))
        counts[split] = (len(drawn), stop - start)
    return counts


def _drawn_of_all(counts: dict[str, tuple[int, int]]) -> dict[str, str]:
    return {split: f"{drawn}/{total}" for split, (drawn, total) in counts.items()}


def _warn_on_other_version() -> None:
    """The plan table describes one ScienceWorld release; another may number variations apart."""
    try:
        from scienceworld import __version__ as version
    except ImportError:
        return
    if version != plans.SCIENCEWORLD_VERSION:
        warnings.warn(
            f"scienceworld {version} is installed but the turn limits were measured with "
            f"{plans.SCIENCEWORLD_VERSION}; rerun scripts/scienceworld_plan_lengths.py",
            stacklevel=3,
        )


class ScienceWorldEnv(TextEnv):
    """ScienceWorld behind the project's interface; privileged: the gold action sequence."""

    name = "scienceworld"
    config_cls = ScienceWorldConfig
    # ScienceWorld's official dev / test variations (less those beyond turn_cap: docs/environments.md)
    eval_splits = {"val": EvalSplit("dev", 0), "test": EvalSplit("test", 0)}
    paper_metrics = (
        PaperMetric(SCORE_MEAN, "ScienceWorld score"),
        PaperMetric(SUCCESS_RATE, "ScienceWorld success"),
    )

    def __init__(self, config: ScienceWorldConfig | None = None) -> None:
        super().__init__(config)
        try:
            from scienceworld import ScienceWorldEnv as Engine
        except ImportError as err:
            raise ImportError("the scienceworld environment needs `pip install scienceworld` and Java 17") from err
        _warn_on_other_version()
        self._engine = Engine("", envStepLimit=self.config.engine_step_limit)
        self.task_names = task_names(self.config)
        self._turn_limit = self.config.max_turns
        self.gold: list[str] = []
        self.task_text = ""
        self.score = 0
        self.completed = False

    def instance(self, seed: int) -> tuple[str, int]:
        """(task name, variation) of ``seed`` in the configured split."""
        return instance_of(seed, self.config)

    def turn_limit(self) -> int:
        return self._turn_limit

    @classmethod
    def turn_limits(cls, config: ScienceWorldConfig) -> list[dict[str, Any]]:
        """Per task: its turn limit, its longest gold sequence and, per split, the variations
        drawn / all (the rest are left out: their sequences do not fit ``turn_cap``); then the
        totals."""
        counts = {task: _split_counts(task, config) for task in task_names(config)}
        rows = [
            {
                "task": task,
                "turn_limit": task_turn_limit(task, config),
                "longest_plan": max(plan_lengths(task)),
                **_drawn_of_all(c),
            }
            for task, c in counts.items()
        ]
        totals = {s: tuple(map(sum, zip(*(c[s] for c in counts.values())))) for s in _SPLITS}
        total = {
            "task": "(all tasks)",
            "turn_limit": max(r["turn_limit"] for r in rows),
            "longest_plan": max(r["longest_plan"] for r in rows),
        }
        return rows + [{**total, **_drawn_of_all(totals)}]

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        task, variation = self.instance(seed)
        self._turn_limit = task_turn_limit(task, self.config)
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
