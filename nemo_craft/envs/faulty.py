"""An environment that hangs or raises on purpose, to test the pool's failure handling."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from nemo_craft.envs.base import EnvConfig, TextEnv
from nemo_craft.envs.prompts import PromptTemplate

_MODES = ("ok", "hang", "raise", "exit")


@dataclasses.dataclass
class FaultyConfig(EnvConfig):
    max_turns: int = 5
    mode: str = "ok"
    """"ok", "hang" (sleep ``hang_s``), "raise" (an exception) or "exit" (kill the process)."""
    fail_on: str = "step"
    """"reset" or "step": when to misbehave."""
    fail_seeds: tuple[int, ...] | None = (1,)
    """Only these seeds misbehave; the others run normally. None: every seed (with mode "hang":
    an environment whose every turn takes ``hang_s``)."""
    hang_s: float = 30.0
    any_action: bool = False
    """Every action counts as "go" (a model that cannot say it still plays two turns): with mode
    "hang" and ``fail_seeds`` None, an environment whose every turn takes ``hang_s``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.fail_on not in ("reset", "step"):
            raise ValueError(f"fail_on must be 'reset' or 'step', got {self.fail_on!r}")


class FaultyEnv(TextEnv):
    """Counts to ``max_turns``: action "go" advances; seeds in ``fail_seeds`` misbehave."""

    name = "faulty"
    config_cls = FaultyConfig

    def _misbehave(self, when: str) -> None:
        cfg = self.config
        if cfg.mode == "ok" or cfg.fail_on != when or (cfg.fail_seeds is not None and self.seed not in cfg.fail_seeds):
            return
        if cfg.mode == "hang":
            time.sleep(cfg.hang_s)
        elif cfg.mode == "raise":
            raise RuntimeError(f"deliberate failure in {when} for seed {self.seed}")
        else:
            os._exit(3)

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        self._misbehave("reset")
        self.count = 0
        return f"count 0 (seed {seed})", "go, go", {}

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        self._misbehave("step")
        self.count += 1
        return (
            f"count {self.count}",
            1.0 if self.count >= 2 else 0.0,
            self.count >= 2,
            {"success": self.count >= 2, "score": min(self.count / 2, 1.0)},
        )

    def parse_action(self, text: str) -> str | None:
        return "go" if self.config.any_action or text.strip() == "go" else None

    def prompt_template(self) -> PromptTemplate:
        return PromptTemplate(task="Say go.", compact_header="faulty", privileged_intro="plan:")

    def _admissible(self) -> list[str]:
        return ["go"]


def make_faulty(**cfg: Any) -> FaultyEnv:
    """Picklable factory for the process backend (``functools.partial(make_faulty, mode=...)``)."""
    return FaultyEnv(FaultyConfig(**cfg))
