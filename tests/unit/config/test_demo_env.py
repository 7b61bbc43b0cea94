"""The CPU demo's Sokoban prompt and turn limit (conf/demo_env/tiny_sokoban.yaml) apply to the
tiny model on Sokoban only: an LLM on Sokoban gets the full prompt and 20 turns."""

from __future__ import annotations

from nemo_craft.config import compose
from nemo_craft.envs.sokoban.env import SokobanConfig

KEYS = ("max_turns", "template", "history_length", "max_plan_length")


def _env(*overrides: str) -> dict:
    cfg = compose(list(overrides))
    return {k: cfg.env.config.get(k) for k in KEYS}


def test_the_tiny_model_on_sokoban_gets_the_demos_compact_prompt_and_6_turns():
    assert _env() == {"max_turns": 6, "template": "compact", "history_length": 0, "max_plan_length": 4}


def test_another_model_on_sokoban_gets_the_full_prompt_and_the_dataclass_turn_limit():
    env = _env("model=smollm2_135m", "model.hf_path=/models/smollm2")
    assert env == {k: getattr(SokobanConfig(), k) for k in KEYS}
    assert env["template"] == "full" and env["max_turns"] == 20


def test_the_tiny_model_on_another_env_gets_none_of_sokobans_demo_settings():
    assert _env("env=search_qa")["max_turns"] == compose(["env=search_qa", "model=smollm2_135m"]).env.config.max_turns
