import shutil

import pytest

pytest.importorskip("scienceworld")
if shutil.which("java") is None:
    pytest.skip("ScienceWorld needs Java", allow_module_level=True)

from nemo_craft.envs import make_env  # noqa: E402
from nemo_craft.envs.scienceworld import ScienceWorldConfig  # noqa: E402
from nemo_craft.envs.scienceworld_plan_lengths import (  # noqa: E402
    PLAN_LENGTHS,
    SCIENCEWORLD_VERSION,
    SPLIT_RANGES,
)

SHORT = ["find-non-living-thing", "lifespan-longest-lived"]


@pytest.fixture(scope="module")
def env():
    env = make_env("scienceworld", tasks=SHORT, max_turns=30)
    yield env
    env.close()


def _replay(env, seed):
    env.reset(seed)
    total, info, done = 0.0, {}, False
    for text in env.expert_actions():
        _, reward, done, info = env.step(text)
        total += reward
        if done:
            break
    return done, info, total


def test_one_instance_replays_deterministically_and_penalises_invalid(env):
    first = env.reset(0)
    assert env.instance(0)[0] == "find-non-living-thing"
    assert env.reset(0) == first
    obs, reward, done, info = env.step("<action>fly to the moon</action>")
    assert info["invalid"] and reward == pytest.approx(-0.1) and not done
    done, info, total = _replay(env, 0)
    assert done and info["success"] and total == pytest.approx(1.0)


def test_splits_do_not_share_variations(env):
    test_env = make_env("scienceworld", tasks=SHORT[:1], split="test")
    try:
        train_vars = {env.instance(s)[1] for s in range(0, 20, 2)}
        test_vars = {test_env.instance(s)[1] for s in range(10)}
        assert train_vars.isdisjoint(test_vars)
    finally:
        test_env.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_gold_replay_more_seeds(env, seed):
    done, info, _ = _replay(env, seed)
    assert done and info["success"]


@pytest.mark.slow
def test_gold_replay_longer_tasks():
    env = make_env("scienceworld", tasks=["boil", "chemistry-mix", "find-plant"], max_turns=200)
    try:
        for seed in range(3):
            done, info, _ = _replay(env, seed)
            assert done and info["success"], env.instance(seed)
    finally:
        env.close()


def test_shipped_plan_table_matches_the_engine(env):
    """Seeds are mapped with the table's split ranges: they must be ScienceWorld's own."""
    import scienceworld

    assert scienceworld.__version__ == SCIENCEWORLD_VERSION
    engine = env._engine
    assert sorted(engine.get_task_names()) == sorted(PLAN_LENGTHS)
    for task, ranges in SPLIT_RANGES.items():
        engine.load(task, 0, "easy")
        assert engine.get_max_variations(task) == len(PLAN_LENGTHS[task])
        assert sorted(engine.get_variations_train()) == list(range(*ranges["train"]))
        assert sorted(engine.get_variations_dev()) == list(range(*ranges["dev"]))
        assert sorted(engine.get_variations_test()) == list(range(*ranges["test"]))


def test_gold_sequence_has_the_tabled_length(env):
    for seed in (1, 3, 5):  # lifespan-longest-lived: one gold sequence per variation
        env.reset(seed)
        task, variation = env.instance(seed)
        assert len(env.gold) == PLAN_LENGTHS[task][variation]
        assert env.turn_limit() == 30  # fits the fixture's max_turns


@pytest.mark.slow
def test_a_plan_longer_than_max_turns_replays_within_its_task_turn_limit():
    env = make_env("scienceworld", split="test")
    try:
        env.reset(77003)
        assert env.instance(77003)[0] == "mendelian-genetics-known-plant"
        assert env.config.max_turns < len(env.gold) <= env.turn_limit()
        done, info, _ = _replay(env, 77003)
        assert done and info["success"], info
    finally:
        env.close()


def test_config_errors():
    with pytest.raises(ValueError, match="split"):
        ScienceWorldConfig(split="val")
