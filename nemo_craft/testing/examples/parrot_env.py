"""An environment whose task is to repeat a word (docs/extending.md).

It shows what an environment declares besides its dynamics: the config, where an action ends
(``stop_strings``), its evaluation splits and the numbers its evaluation reports. After
``register()``, ``env.name=parrot`` builds it (with a ``conf/env/parrot.yaml`` for its settings).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nemo_craft.envs import EnvConfig, EvalSplit, PaperMetric, TextEnv, register_env
from nemo_craft.envs.base import extract_tag
from nemo_craft.envs.prompts import PromptTemplate

WORDS = {"train": ("apple", "river", "stone", "cloud"), "test": ("amber", "ridge")}


@dataclasses.dataclass
class ParrotConfig(EnvConfig):
    max_turns: int = 3
    split: str = "train"
    """Which words: "train" or "test" (the held-out ones)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in WORDS:
            raise ValueError(f"split must be one of {tuple(WORDS)}, got {self.split!r}")


class ParrotEnv(TextEnv):
    name = "parrot"
    config_cls = ParrotConfig
    stop_strings = ("</say>",)  # generation stops where an action ends
    eval_splits = {"test": EvalSplit(env_split="test", first_seed=0)}  # "val": the trainer's validation
    paper_metrics = (PaperMetric("success_rate", "Parrot success"),)

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        words = WORDS[self.config.split]
        self.word = words[seed % len(words)]
        return f"Say: {self.word}", f"The word is {self.word}.", {}

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        success = action == self.word
        info = {"success": success, "score": float(success)}
        return ("Well said." if success else "Try again."), float(success), success, info

    def parse_action(self, text: str) -> str | None:
        return extract_tag(text, "say")

    def prompt_template(self) -> PromptTemplate:
        return PromptTemplate(
            task="Repeat the word you are shown.",
            compact_header="parrot",
            privileged_intro="A hint:",
            action_format="<say> </say> tags",
            action_what="the word",
        )

    def expert_actions(self) -> list[str]:
        return [f"<say>{self.word}</say>"]


def register() -> None:
    register_env("parrot", "nemo_craft.testing.examples.parrot_env:ParrotEnv")
