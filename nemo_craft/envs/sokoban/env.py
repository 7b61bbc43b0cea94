"""Sokoban as a text environment: seeded rooms, the optimal plan as privileged context."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from nemo_craft.envs.base import EnvConfig, TextEnv, check_positive
from nemo_craft.envs.prompts import PromptTemplate
from nemo_craft.envs.sokoban.room import ACTIONS, LEGEND, Room, generate_room
from nemo_craft.envs.sokoban.solver import solve
from nemo_craft.envs.spec import HELD_OUT, SUCCESS_RATE, EvalSplit, PaperMetric

_ALIASES = {
    "u": "up",
    "d": "down",
    "l": "left",
    "r": "right",
    "north": "up",
    "south": "down",
    "west": "left",
    "east": "right",
}


@dataclasses.dataclass
class SokobanConfig(EnvConfig):
    """Sokoban settings. The CPU default is a 6x6 room with one box."""

    max_turns: int = 20
    height: int = 6
    """Room rows including the wall border (>= 4)."""
    width: int = 6
    """Room columns including the wall border (>= 4)."""
    num_boxes: int = 1
    min_plan_length: int = 2
    """Reject rooms whose optimal plan is shorter than this many moves."""
    max_plan_length: int = 0
    """Reject rooms whose optimal plan is longer (0: no limit besides max_turns)."""
    pulls: int = 100
    """Reverse-play steps when generating a room (more: boxes further from targets)."""
    success_reward: float = 1.0
    box_on_target_reward: float = 0.0
    """Shaping: + for each box pushed onto a target, - for each pushed off (0: no shaping)."""
    step_penalty: float = 0.0
    """Shaping: subtracted on every valid move (0: none)."""
    require_action_tags: bool = False
    """True: only ``<action>...</action>`` parses; False: a bare action word parses too."""
    max_attempts: int = 200
    """Generation attempts per seed before giving up with an error."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("height", "width"):
            check_positive(name, getattr(self, name), minimum=4)
        check_positive("num_boxes", self.num_boxes)
        check_positive("min_plan_length", self.min_plan_length)
        check_positive("pulls", self.pulls)
        check_positive("max_attempts", self.max_attempts)
        interior = (self.height - 2) * (self.width - 2)
        if self.num_boxes * 2 + 1 > interior:
            raise ValueError(
                f"num_boxes={self.num_boxes} does not fit a {self.height}x{self.width} room "
                f"({interior} interior cells need room for boxes, targets and the player)"
            )
        if self.max_plan_length and self.max_plan_length < self.min_plan_length:
            raise ValueError(f"max_plan_length={self.max_plan_length} < min_plan_length={self.min_plan_length}")


SOKOBAN_PROMPT = PromptTemplate(
    task=(
        "You are an expert agent operating in the Sokoban puzzle game. Your goal is to push every "
        "box onto a target. You can move up, down, left or right; walking into a box pushes it one "
        "square if the square beyond it is free. You cannot pull boxes, and a box pushed into a "
        f"corner is stuck. Symbols: {LEGEND}."
    ),
    compact_header="sokoban",
    privileged_intro="A solver's optimal plan from the start of this puzzle (one move per step):",
    compact_privileged_intro="plan: ",
)


class SokobanEnv(TextEnv):
    """Push every box onto a target. Reward: ``success_reward`` on solving, optional shaping."""

    name = "sokoban"
    config_cls = SokobanConfig
    # procedural, no held-out task list: test rooms come from the test seed stream
    eval_splits = {"test": EvalSplit(first_seed=HELD_OUT)}
    paper_metrics = (PaperMetric(SUCCESS_RATE, "Sokoban success"),)

    def __init__(self, config: SokobanConfig | None = None) -> None:
        super().__init__(config)
        self.room: Room | None = None
        self.player = -1
        self.boxes: frozenset[int] = frozenset()
        self.plan: list[str] = []

    def _reset(self, seed: int) -> tuple[str, str, dict[str, Any]]:
        self.room, self.player, self.boxes, self.plan = self._generate(seed)
        return self._observation(), ", ".join(self.plan), {"plan_length": len(self.plan)}

    def _generate(self, seed: int) -> tuple[Room, int, frozenset[int], list[str]]:
        cfg = self.config
        rng = random.Random(f"sokoban:{seed}")
        longest = cfg.max_plan_length or cfg.max_turns
        carve = int(1.5 * (cfg.height + cfg.width))
        for _ in range(cfg.max_attempts):
            made = generate_room(rng, cfg.height, cfg.width, cfg.num_boxes, pulls=cfg.pulls, carve_steps=carve)
            if made is None:
                continue
            room, player, boxes = made
            plan = solve(room, player, boxes)
            if plan is not None and cfg.min_plan_length <= len(plan) <= longest:
                return room, player, boxes, plan
        raise RuntimeError(
            f"no {cfg.height}x{cfg.width} Sokoban room with {cfg.num_boxes} box(es) and a plan of "
            f"{cfg.min_plan_length}..{longest} moves in {cfg.max_attempts} attempts for seed "
            f"{seed}; "
            "raise max_turns / max_plan_length or lower min_plan_length"
        )

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        cfg = self.config
        before = len(self.boxes & self.room.targets)
        player, boxes = self.room.move(self.player, self.boxes, action)
        moved = player != self.player
        self.player, self.boxes = player, boxes
        after = len(boxes & self.room.targets)
        reward = cfg.box_on_target_reward * (after - before) - cfg.step_penalty
        solved = after == cfg.num_boxes
        if solved:
            reward += cfg.success_reward
        return self._observation(), reward, solved, {"moved": moved}

    def parse_action(self, text: str) -> str | None:
        inner = self.action_body(text)
        if inner is None:
            return None
        word = inner.strip().strip(".!\"'`").lower()
        word = _ALIASES.get(word, word)
        return word if word in ACTIONS else None

    def prompt_template(self) -> PromptTemplate:
        return SOKOBAN_PROMPT

    def expert_actions(self) -> list[str]:
        # The compact template (tiny models) answers with the bare word when tags are optional:
        # a character-level model then spends 5 tokens a turn, not 22.
        if self.config.template == "compact" and not self.config.require_action_tags:
            return list(self.plan)
        return [f"<action>{action}</action>" for action in self.plan]

    def _observation(self) -> str:
        return self.room.render(self.player, self.boxes)

    def _progress(self) -> tuple[bool, float]:
        if self.room is None:
            return False, 0.0
        on = len(self.boxes & self.room.targets)
        return on == self.config.num_boxes, on / self.config.num_boxes

    def _admissible(self) -> list[str]:
        return list(ACTIONS)
