import json

import pytest

from tests.conftest import need_engine

need_engine("alfworld")
need_engine("textworld")

from nemo_craft.envs import make_env  # noqa: E402
from nemo_craft.envs.alfworld import TASK_TYPES, ALFWorldConfig, generate_game  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("alfworld"))


def test_generated_games_are_byte_identical_by_seed_and_cover_task_types():
    assert generate_game(3, "train") == generate_game(3, "train")
    assert generate_game(3, "train") != generate_game(4, "train")
    assert generate_game(3, "train") != generate_game(3, "test")
    kinds = {json.loads(generate_game(s, "train")["traj_data.json"])["task_type"] for s in range(40)}
    assert kinds == set(TASK_TYPES)


def test_train_and_test_use_different_floor_plans():
    def plans(split):
        return {json.loads(generate_game(s, split)["traj_data.json"])["scene"]["floor_plan"] for s in range(30)}

    assert plans("train").isdisjoint(plans("test"))


def test_one_instance_plan_replay_and_invalid_action(cache):
    env = make_env("alfworld", data="generated", cache_dir=cache)
    try:
        obs, privileged, info = env.reset(2)
        assert "Your task is to:" in obs and privileged.startswith("1. ")
        assert env.reset(2)[:2] == (obs, privileged)
        obs2, reward, done, info = env.step("<action>fly to the moon</action>")
        assert info["invalid"] and reward == pytest.approx(-0.1) and not done and obs2 == obs
        assert "go to" in " ".join(info["admissible_actions"])
        total = 0.0
        for text in env.expert_actions():
            _, reward, done, info = env.step(text)
            total += reward
        assert done and info["success"] and total == pytest.approx(1.0)
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "test"])
def test_plan_replay_more_seeds(cache, split):
    env = make_env("alfworld", data="generated", split=split, cache_dir=cache)
    try:
        for seed in range(6):
            env.reset(seed)
            for text in env.expert_actions():
                *_, done, info = env.step(text)
            assert done and info["success"], (split, seed)
    finally:
        env.close()


def test_config_errors(monkeypatch):
    with pytest.raises(ValueError, match="split"):
        ALFWorldConfig(split="dev")
    with pytest.raises(ValueError, match="task_types"):
        ALFWorldConfig(task_types=("look_at_obj_in_light",))
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(ValueError, match="ALFWORLD_DATA"):
        make_env("alfworld", data="official")
