"""The one environment interface of nemo_craft.

    reset(seed)        -> (observation: str, privileged_context: str, info: dict)
    step(action_text)  -> (observation: str, reward: float, done: bool, info: dict)

``action_text`` is the model's raw text for the turn; the environment parses it (``parse_action``)
and an unparseable or inadmissible action is *invalid*: it costs ``invalid_penalty``, leaves the
state unchanged and does not end the episode (only the turn budget, ``turn_limit()``, does).
Rewards are per step; the trajectory reward is their sum.

``info`` always carries ``success`` (bool), ``score`` (float in [0, 1]), ``invalid`` (bool),
``admissible_actions`` (list[str]; empty where an environment has free-form actions) and ``turn``.

Subclasses implement ``_reset``, ``_step``, ``parse_action`` and the prompt pieces; this class owns
the turn budget, the invalid-action penalty and the history the prompt templates show.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from nemo_craft.envs.prompts import Turn
from nemo_craft.envs.spec import EvalSplit, PaperMetric

_TEMPLATES = ("full", "compact")


@dataclasses.dataclass
class EnvConfig:
    """Settings every environment has; each environment subclasses this with its own defaults."""

    max_turns: int = 50
    """Turns (valid or invalid actions) before the episode is cut off unsuccessful."""
    invalid_penalty: float = 0.1
    """Subtracted from the reward for each invalid (unparseable / inadmissible) action."""
    template: str = "full"
    """Prompt template: "full" (verl-agent / GiGPO style, for LLMs) or "compact" (tiny models)."""
    history_length: int = 2
    """How many recent (observation, action) turns the prompt shows."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_turns, int) or self.max_turns < 1:
            raise ValueError(f"max_turns must be an int >= 1, got {self.max_turns!r}")
        if self.invalid_penalty < 0:
            raise ValueError(
                f"invalid_penalty is subtracted per invalid action and must be >= 0, got {self.invalid_penalty!r}"
            )
        if self.template not in _TEMPLATES:
            raise ValueError(f"template must be one of {_TEMPLATES}, got {self.template!r}")
        if not isinstance(self.history_length, int) or self.history_length < 0:
            raise ValueError(f"history_length must be an int >= 0, got {self.history_length!r}")


def check_positive(name: str, value: Any, *, minimum: float = 1) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a number >= ``minimum``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")


_TAG_RE_CACHE: dict[str, re.Pattern[str]] = {}


def extract_tag(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>...</tag>`` in ``text`` (stripped), or None if there is none."""
    pattern = _TAG_RE_CACHE.get(tag)
    if pattern is None:
        pattern = re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL | re.IGNORECASE)
        _TAG_RE_CACHE[tag] = pattern
    found = pattern.findall(text)
    return found[-1].strip() if found else None


class TextEnv(abc.ABC):
    """Base of every environment: turn budget, invalid-action penalty, history, prompt."""

    name: ClassVar[str]
    config_cls: ClassVar[type[EnvConfig]] = EnvConfig
    stop_strings: ClassVar[tuple[str, ...]] = ("</action>",)
    """Text that ends an action: generation stops there (the rollout's default stop strings)."""
    eval_splits: ClassVar[Mapping[str, EvalSplit]] = {}
    """Evaluation split ("val", "test") -> its tasks (``nemo-craft eval --split``). "val" defaults to
    the trainer's validation (the run's split from ``trainer.val_seed_offset``); "test" must be
    declared to be evaluated."""
    paper_metrics: ClassVar[tuple[PaperMetric, ...]] = ()
    """The numbers of the paper's table for this environment, in order; empty: its success rate."""

    def __init__(self, config: EnvConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}")
        self.turn = 0
        self.done = True
        self.history: list[Turn] = []
        self.observation = ""
        self.seed: int | None = None
        self._last_info: dict[str, Any] = {}

    # -- the interface -------------------------------------------------------------------------

    def reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        self.seed = int(seed)
        self.turn = 0
        self.done = False
        self.history = []
        observation, privileged, info = self._reset(self.seed)
        info = self._complete_info(info, invalid=False)
        self.observation = observation
        self._last_info = info
        return observation, privileged, info

    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.done:
            raise RuntimeError(f"{self.name}: step() after the episode ended; call reset(seed)")
        self.turn += 1
        action = self.parse_action(action_text)
        if action is None:
            observation, reward, done, info = self.observation, 0.0, False, {"invalid": True}
        else:
            observation, reward, done, info = self._step(action)
        invalid = bool(info.get("invalid", False))
        if invalid:
            reward -= self.config.invalid_penalty
            observation = self.observation  # an invalid action changes nothing
        if not done and self.turn >= self.turn_limit():
            done, info["truncated"] = True, True
        info = self._complete_info(info, invalid=invalid)
        shown = action if action is not None else action_text.strip()[:80]
        self.history.append(Turn(self.observation, shown, invalid))
        self.observation, self.done, self._last_info = observation, done, info
        return observation, float(reward), done, info

    def close(self) -> None:  # noqa: B027 -- optional hook: most environments hold nothing to release
        """Release engine resources (processes, JVMs); the default has none."""

    def turn_limit(self) -> int:
        """Turns the current episode may take. ``config.max_turns`` here; an environment whose task
        kinds need different budgets (ScienceWorld) sets one per task at reset."""
        return self.config.max_turns

    @classmethod
    def turn_limits(cls, config: EnvConfig) -> list[dict[str, Any]]:
        """The turn limit of each task kind under ``config``, without building the environment
        (``nemo-craft envs limits``): one row here, as every task shares ``max_turns``."""
        return [{"task": "(all)", "turn_limit": config.max_turns}]

    # -- prompts -------------------------------------------------------------------------------

    def render_prompt(self) -> str:
        """The student prompt for the current turn, in ``config.template`` style."""
        return self.prompt_template().render(
            observation=self.observation,
            history=self.history,
            turn=self.turn,
            admissible=self._last_info.get("admissible_actions", []),
            style=self.config.template,
            history_length=self.config.history_length,
            task=self.task_description(),
        )

    def task_description(self) -> str:
        """Per-instance task text (e.g. the question) for ``{task}`` in the template."""
        return ""

    def render_privileged(self, privileged: str) -> str:
        """Privileged context as the teacher's system message (prepended to the student prompt)."""
        return self.prompt_template().render_privileged(privileged, style=self.config.template)

    # -- for subclasses ------------------------------------------------------------------------

    @abc.abstractmethod
    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        """Build the instance for ``seed``: observation, privileged context, info."""

    @abc.abstractmethod
    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Apply a parsed action. Set info["invalid"] for an action the engine rejects."""

    def action_body(self, text: str) -> str | None:
        """The content of the last ``<action>`` tag of ``text``; the whole text when the environment's
        ``require_action_tags`` is False; None when a required tag is missing."""
        inner = extract_tag(text, "action")
        if inner is None and not getattr(self.config, "require_action_tags", True):
            return text
        return inner

    @abc.abstractmethod
    def parse_action(self, text: str) -> str | None:
        """The canonical action in the model's text, or None when there is none."""

    @abc.abstractmethod
    def prompt_template(self):  # -> nemo_craft.envs.prompts.PromptTemplate
        """The environment's prompt template."""

    def expert_actions(self) -> list[str]:
        """The privileged plan from the reset state, as model texts ``step`` accepts.

        Used by ``envs check`` and the tests (replaying it must succeed) and by SFT warm-ups.
        """
        raise NotImplementedError(f"{self.name} has no replayable expert plan")

    def _progress(self) -> tuple[bool, float]:
        """(success, score) of the current state; used to fill info."""
        return bool(self._last_info.get("success", False)), float(self._last_info.get("score", 0.0))

    def _admissible(self) -> list[str]:
        return []

    def _complete_info(self, info: dict[str, Any], *, invalid: bool) -> dict[str, Any]:
        success, score = self._progress()
        info.setdefault("success", success)
        info.setdefault("score", score)
        info["invalid"] = invalid
        info.setdefault("admissible_actions", self._admissible())
        info["turn"] = self.turn
        return info
