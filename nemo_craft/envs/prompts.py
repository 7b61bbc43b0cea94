"""Prompt templates for multi-turn agentic environments.

"full" follows the templates of verl-agent / GiGPO: the task, how many steps were taken, the most
recent observations and actions, the current observation, the admissible actions and the answer
format (reason in ``<think>``, act in ``<action>``). "compact" is for tiny (char-level, 256-512
token) models: the current observation, the last few actions and a one-word cue, no prose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple


class Turn(NamedTuple):
    """One past turn as the prompt shows it."""

    observation: str
    action: str
    invalid: bool = False


_FULL_ANSWER = (
    "Now it's your turn to take an action. You should first reason step-by-step about the current "
    "situation. This reasoning process MUST be enclosed within <think> </think> tags. Once you've "
    "finished your reasoning, you should choose {what} and present it within {tags}."
)


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """What an environment tells the model; ``render`` assembles the turn's prompt."""

    task: str
    """The full template's opening paragraph (rules, goal, legend)."""
    compact_header: str
    """The compact template's first line (a few characters naming the task)."""
    privileged_intro: str
    """Teacher system message before the privileged context (full template)."""
    compact_privileged_intro: str = "hint: "
    action_format: str = "<action> </action> tags"
    """How the answer must be wrapped, in words, for the full template."""
    action_what: str = "an admissible action for the current step"
    compact_cue: str = "act:"
    compact_history_sep: str = " "
    show_history_observations: bool = True
    """Full template: show past observations too (False: only past actions)."""

    def render(
        self,
        *,
        observation: str,
        history: Sequence[Turn],
        turn: int,
        admissible: Sequence[str],
        style: str,
        history_length: int,
        task: str = "",
    ) -> str:
        """``task`` (e.g. the question) replaces ``{task}`` in ``task`` and ``compact_header``."""
        recent = list(history)[-history_length:] if history_length > 0 else []
        if style == "compact":
            return self._render_compact(observation, recent, task)
        return self._render_full(observation, recent, turn, admissible, task)

    def render_privileged(self, privileged: str, *, style: str) -> str:
        if style == "compact":
            return f"{self.compact_privileged_intro}{privileged}\n"
        return f"{self.privileged_intro}\n{privileged}\n"

    def _render_compact(self, observation: str, recent: Sequence[Turn], task: str) -> str:
        lines = [self.compact_header.replace("{task}", task)]
        if observation.strip():
            lines.append(observation.rstrip("\n"))
        if recent:
            acts = self.compact_history_sep.join(t.action + ("!" if t.invalid else "") for t in recent)
            lines.append(f"prev: {acts}")
        lines.append(self.compact_cue)
        return "\n".join(lines)

    def _render_full(
        self,
        observation: str,
        recent: Sequence[Turn],
        turn: int,
        admissible: Sequence[str],
        task: str,
    ) -> str:
        parts = [self.task.replace("{task}", task).strip()]
        if turn == 0:
            parts.append(f"Your current observation is:\n{observation.rstrip()}")
        else:
            parts.append(
                f"Prior to this step, you have already taken {turn} step(s). Below are the most "
                f"recent {len(recent)} observations and the corresponding actions you took:"
            )
            for k, past in enumerate(recent):
                step_no = turn - len(recent) + k + 1
                mark = " (invalid)" if past.invalid else ""
                if self.show_history_observations:
                    parts.append(
                        f"[Observation {step_no}:\n{past.observation.rstrip()}\nAction {step_no}: {past.action}{mark}]"
                    )
                else:
                    parts.append(f"[Action {step_no}: {past.action}{mark}]")
            parts.append(f"You are now at step {turn + 1} and your current observation is:\n{observation.rstrip()}")
        if admissible:
            parts.append("Your admissible actions of the current situation are: [" + ", ".join(admissible) + "].")
        parts.append(_FULL_ANSWER.format(what=self.action_what, tags=self.action_format))
        return "\n\n".join(parts)
