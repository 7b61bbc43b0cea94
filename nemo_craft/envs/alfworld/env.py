"""ALFWorld (``pip install alfworld``) text games behind the project's interface.

Games come from the official data when ``ALFWORLD_DATA`` points at it (``json_2.1.1/{train,
valid_seen,valid_unseen}``, as ``alfworld-download`` lays it out) or are generated offline from the
wheel (``nemo_craft.envs.alfworld.gen``; scores on those are not comparable with published
ALFWorld numbers). The privileged context is the PDDL planner's expert plan at reset (TextWorld's
``policy_commands``: Fast Downward over the game's PDDL, which knows where hidden objects are).
Reward 1 when the game is won. An action outside the admissible commands is invalid.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any

from nemo_craft.envs.alfworld.gen import TASK_TYPES, game_dir
from nemo_craft.envs.base import EnvConfig, TextEnv
from nemo_craft.envs.prompts import PromptTemplate
from nemo_craft.envs.spec import SUCCESS_RATE, EvalSplit, PaperMetric

_SPLITS = ("train", "test", "valid_seen", "valid_unseen")
_OFFICIAL_SPLIT = {
    "train": "train",
    "test": "valid_unseen",
    "valid_seen": "valid_seen",
    "valid_unseen": "valid_unseen",
}
_WELCOME = re.compile(r"^-= Welcome to TextWorld, ALFRED! =-\s*")


@dataclasses.dataclass
class ALFWorldConfig(EnvConfig):
    """ALFWorld settings (50 turns as in the paper's setup)."""

    max_turns: int = 50
    data: str = "auto"
    """"official" ($ALFWORLD_DATA), "generated" (offline), or "auto" (official when present)."""
    split: str = "train"
    """"train" / "test" (generated: seen / unseen floor plans; official: train / valid_unseen),
    or the official "valid_seen" / "valid_unseen"."""
    task_types: tuple[str, ...] = TASK_TYPES
    """Task types of generated games."""
    cache_dir: str = "~/.cache/nemo_craft/alfworld"
    """Where generated games are written (a few KB each, made on first use)."""
    replan_each_step: bool = False
    """Also put the planner's plan from the current state in info["expert_plan"] every step
    (slower: 35-250 ms a step)."""
    require_action_tags: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.task_types = tuple(self.task_types)
        if self.data not in ("auto", "official", "generated"):
            raise ValueError(f"data must be 'auto', 'official' or 'generated', got {self.data!r}")
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {self.split!r}")
        bad = sorted(set(self.task_types) - set(TASK_TYPES))
        if bad or not self.task_types:
            raise ValueError(f"task_types {bad or '()'} not generated; choose from {TASK_TYPES}")
        if self.data == "generated" and self.split in ("valid_seen", "valid_unseen"):
            raise ValueError(f"split {self.split!r} exists only with data='official'")


ALFWORLD_PROMPT = PromptTemplate(
    task="You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: {task}",
    compact_header="alf: {task}",
    privileged_intro="An expert plan that completes this task from the start:",
    compact_privileged_intro="plan: ",
)


def official_games(split: str) -> list[str]:
    """Solvable official game files of a split (movable-receptacle and slicing tasks excluded,
    as ALFWorld's own loader does); empty when ALFWORLD_DATA is unset or lacks them."""
    root = os.environ.get("ALFWORLD_DATA")
    if not root:
        return []
    pattern = os.path.join(root, "json_2.1.1", _OFFICIAL_SPLIT[split], "**", "game.tw-pddl")
    return sorted(p for p in glob.glob(pattern, recursive=True) if "movable" not in p and "Sliced" not in p)


class ALFWorldEnv(TextEnv):
    """Household tasks in text; privileged: the planner's expert plan."""

    name = "alfworld"
    config_cls = ALFWorldConfig
    # test: the official valid_unseen games with $ALFWORLD_DATA, unseen floor plans for generated games
    eval_splits = {"test": EvalSplit("test", 0)}
    paper_metrics = (PaperMetric(SUCCESS_RATE, "ALFWorld success"),)

    def __init__(self, config: ALFWorldConfig | None = None) -> None:
        super().__init__(config)
        try:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        except ImportError as err:
            from nemo_craft.envs.registry import (  # lazy: the registry imports this module
                INSTALL_ENGINES,
                MissingEngineError,
            )

            raise MissingEngineError(f"the alfworld environment needs alfworld: {INSTALL_ENGINES}") from err
        self._textworld = textworld
        self._wrappers = (AlfredDemangler, AlfredInfos)
        self.games = self.preflight(self.config)
        self._engine = None
        self._state = None
        self.plan: list[str] = []
        self.task_text = ""
        self.won = False
        self.gamefile = ""

    @staticmethod
    def preflight(cfg: ALFWorldConfig) -> list[str]:
        """The official game files ``cfg`` plays (empty: generated games); a ValueError naming
        ALFWORLD_DATA when ``cfg`` needs the official games and they are not there."""
        games = official_games(cfg.split) if cfg.data != "generated" else []
        if games or (cfg.data != "official" and cfg.split not in ("valid_seen", "valid_unseen")):
            return games
        why = f"data={cfg.data!r}" if cfg.data == "official" else f"split={cfg.split!r}"
        root = os.environ.get("ALFWORLD_DATA")
        where = (
            f"ALFWORLD_DATA={root} has no games under json_2.1.1/{_OFFICIAL_SPLIT[cfg.split]}"
            if root
            else "ALFWORLD_DATA is not set"
        )
        raise ValueError(
            f"alfworld: {why} needs the official games, and {where}; set ALFWORLD_DATA to the "
            "directory alfworld-download fills, or use env.config.data=generated with split train/test"
        )

    @property
    def generated(self) -> bool:
        return not self.games

    def game_file(self, seed: int) -> str:
        if self.games:
            return self.games[seed % len(self.games)]
        cfg = self.config
        return os.path.join(game_dir(cfg.cache_dir, seed, cfg.split, cfg.task_types), "game.tw-pddl")

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        self.close()
        self.gamefile = self.game_file(seed)
        infos = self._textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=True, extras=["gamefile"])
        demangler, game_infos = self._wrappers
        self._engine = self._textworld.start(self.gamefile, infos, wrappers=[demangler(shuffle=False), game_infos])
        self._state = self._engine.reset()
        self.plan = list(self._state["policy_commands"] or [])
        self._set_replanning(self.config.replan_each_step)
        self.won = False
        observation = _WELCOME.sub("", self._state.feedback).strip()
        found = re.search(r"Your task is to: (.*)", observation)
        self.task_text = found.group(1).strip().rstrip(".") if found else ""
        privileged = "\n".join(f"{k + 1}. {a}" for k, a in enumerate(self.plan))
        return (
            observation,
            privileged,
            {
                "gamefile": self.gamefile,
                "generated": self.generated,
                "expert_plan": list(self.plan),
            },
        )

    def _set_replanning(self, on: bool) -> None:
        env = self._engine
        while env is not None:  # the PDDL env under the wrappers reads request_infos each step
            if getattr(env, "request_infos", None) is not None:
                env.request_infos.policy_commands = on
            env = getattr(env, "_wrapped_env", None)

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if action not in self._admissible():
            return self.observation, 0.0, False, {"invalid": True}
        self._state, _, done = self._engine.step(action)
        self.won = bool(self._state["won"])
        info: dict[str, Any] = {}
        if self.config.replan_each_step:
            info["expert_plan"] = list(self._state["policy_commands"] or [])
        return self._state.feedback.strip(), float(self.won), bool(done or self.won), info

    def parse_action(self, text: str) -> str | None:
        inner = self.action_body(text)
        if inner is None:
            return None
        action = " ".join(inner.split()).lower().rstrip(".")
        return action or None

    def prompt_template(self) -> PromptTemplate:
        return ALFWORLD_PROMPT

    def task_description(self) -> str:
        return self.task_text

    def expert_actions(self) -> list[str]:
        return [f"<action>{a}</action>" for a in self.plan]

    def _admissible(self) -> list[str]:
        if self._state is None:
            return []
        return [c for c in self._state["admissible_commands"] or [] if c != "help"]

    def _progress(self) -> tuple[bool, float]:
        return self.won, float(self.won)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
