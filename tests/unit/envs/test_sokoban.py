import pytest

from nemo_craft.envs import make_env
from nemo_craft.envs.sokoban import Room, SokobanConfig, SokobanEnv, solve
from nemo_craft.envs.sokoban.solver import live_squares


def _replay(env, seed):
    _, plan, _ = env.reset(seed)
    total, info, done = 0.0, {}, False
    for action in plan.split(", "):
        assert not done
        _, reward, done, info = env.step(f"<think>plan</think><action>{action}</action>")
        total += reward
    return done, info, total


def test_same_seed_same_instance_and_plan():
    a, b = SokobanEnv(), SokobanEnv()
    for seed in range(10):
        assert a.reset(seed) == b.reset(seed)
    assert a.reset(3)[0] != a.reset(4)[0] or a.reset(3)[1] != a.reset(4)[1]


def test_same_seed_same_transitions():
    a, b = SokobanEnv(), SokobanEnv()
    a.reset(7), b.reset(7)
    for action in ["up", "left", "down", "right", "noise", "left"]:
        assert a.step(action) == b.step(action)


@pytest.mark.parametrize("cfg", [{}, {"height": 8, "width": 8, "num_boxes": 2, "max_turns": 40}])
def test_replaying_the_plan_solves(cfg):
    env = make_env("sokoban", **cfg)
    for seed in range(12):
        done, info, total = _replay(env, seed)
        assert done and info["success"] and info["score"] == 1.0
        assert total == pytest.approx(1.0)


def test_plan_is_optimal_on_a_hand_made_room():
    grid = ["######", "#@_$.#", "######"]
    walls = frozenset(r * 6 + c for r, row in enumerate(grid) for c, ch in enumerate(row) if ch == "#")
    room = Room(3, 6, walls, frozenset({10}))
    assert solve(room, 7, frozenset({9})) == ["right", "right"]  # walk, push
    assert solve(room, 7, frozenset({8})) == ["right", "right"]  # push, push
    assert solve(room, 8, frozenset({9})) == ["right"]
    assert 7 not in live_squares(room)  # a non-target corner is dead
    assert {8, 9, 10} <= live_squares(room)


def test_dead_start_is_unsolvable():
    grid = ["#####", "#$@.#", "#####"]
    walls = frozenset(r * 5 + c for r, row in enumerate(grid) for c, ch in enumerate(row) if ch == "#")
    room = Room(3, 5, walls, frozenset({8}))
    assert solve(room, 7, frozenset({6})) is None


def test_invalid_action_penalty_keeps_state_and_episode():
    env = SokobanEnv(SokobanConfig(max_turns=5))
    obs, _, _ = env.reset(0)
    obs2, reward, done, info = env.step("I will jump")
    assert info["invalid"] and reward == pytest.approx(-0.1) and not done and obs2 == obs
    obs3, reward, done, info = env.step("<action>fly</action>")
    assert info["invalid"] and not done and obs3 == obs
    strict = SokobanEnv(SokobanConfig(require_action_tags=True))
    strict.reset(0)
    assert strict.step("up")[3]["invalid"]


def test_turn_budget_ends_episode():
    env = SokobanEnv(SokobanConfig(max_turns=3))
    env.reset(1)
    dones = [env.step("nonsense")[2] for _ in range(3)]
    assert dones == [False, False, True]
    with pytest.raises(RuntimeError):
        env.step("up")


def test_shaping_is_optional():
    env = SokobanEnv(SokobanConfig(step_penalty=0.01))
    done, info, total = _replay(env, 0)
    plan_len = info["turn"]
    assert total == pytest.approx(1.0 - 0.01 * plan_len)


@pytest.mark.parametrize(
    "bad",
    [
        {"height": 3},
        {"num_boxes": 0},
        {"max_turns": 0},
        {"template": "huge"},
        {"num_boxes": 9},
        {"invalid_penalty": -1},
    ],
)
def test_config_errors_name_the_value(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        SokobanConfig(**bad)


def test_prompts_fit_budgets():
    compact = SokobanEnv(SokobanConfig(template="compact"))
    obs, plan, _ = compact.reset(0)
    compact.step("up")
    compact.step("left")
    prompt = compact.render_prompt()
    assert obs.splitlines()[0] in prompt or compact.observation.splitlines()[0] in prompt
    assert len(prompt) <= 120  # a char-level model: characters are tokens
    assert len(compact.render_privileged(plan) + prompt) <= 200
    full = SokobanEnv()
    full.reset(0)
    full.step("<action>up</action>")
    text = full.render_prompt()
    assert "<action>" in text and "up, down, left, right" in text and full.observation in text
    assert len(text) / 3.5 < 512  # ~tokens of a BPE tokenizer


def test_bigger_rooms_generate():
    env = SokobanEnv(SokobanConfig(height=10, width=10, num_boxes=3, max_turns=100))
    for seed in range(3):
        _, plan, info = env.reset(seed)
        assert info["plan_length"] == len(plan.split(", ")) >= 2
