import dataclasses

import pytest

from nemo_craft.envs import make_env
from nemo_craft.envs.webshop import WebShopConfig, make_catalog, webshop_reward
from nemo_craft.envs.webshop.catalog import make_goal


def test_same_seed_same_goal_privileged_and_transitions():
    a, b = make_env("webshop"), make_env("webshop")
    assert a.reset(5) == b.reset(5)
    for text in a.expert_actions()[:2] + ["click[features]", "click[< prev]"]:
        assert a.step(text) == b.step(text)
    assert a.reset(5)[1] != a.reset(6)[1]


@pytest.mark.parametrize("split", ["train", "test"])
def test_replaying_the_target_purchase_earns_full_reward(split):
    env = make_env("webshop", split=split)
    for seed in range(12):
        env.reset(seed)
        total = 0.0
        for text in env.expert_actions():
            *_, reward, done, info = env.step(text)
            total += reward
        assert done and info["success"] and total == pytest.approx(1.0)


def test_reward_follows_webshop_formula():
    import random

    product = make_catalog()[0]
    goal = make_goal(random.Random(0), product)
    full = dict(goal.options)
    assert webshop_reward(product, full, goal)["reward"] == 1.0
    missing_one = dict(list(goal.options)[1:])
    n = len(goal.attributes) + len(goal.options) + 1
    assert webshop_reward(product, missing_one, goal)["reward"] == pytest.approx((n - 1) / n)
    cheap = dataclasses.replace(goal, price_upper=product.price - 1)
    assert webshop_reward(product, full, cheap)["reward"] == pytest.approx((n - 1) / n)
    other = next(p for p in make_catalog() if p.category != product.category)
    wrong = dataclasses.replace(goal, name="zzz unrelated")
    assert webshop_reward(other, full, wrong)["r_type"] == 0.0


def test_wrong_options_give_partial_reward():
    env = make_env("webshop")
    env.reset(0)
    plan = env.expert_actions()
    env.step(plan[0]), env.step(plan[1])
    *_, reward, done, info = env.step("click[buy now]")  # no options chosen
    assert done and 0 < reward < 1 and not info["success"]


def test_invalid_actions_are_penalised_and_do_not_end():
    env = make_env("webshop")
    obs, *_ = env.reset(0)
    for text in ["click[buy now]", "buy it", "search[]", "<action>jump[x]</action>"]:
        obs2, reward, done, info = env.step(text)
        assert info["invalid"] and reward == pytest.approx(-0.1) and not done and obs2 == obs
    env.step("search[boot]")
    *_, info = env.step("search[shoes]")  # no search bar on the results page
    assert info["invalid"]


def test_grammar_and_pages():
    env = make_env("webshop")
    env.reset(1)
    assert env.render_prompt().count("search[<your query>]") >= 1
    obs, *_, info = env.step("search[chair]")
    assert "Page 1" in obs and "click[next >]" in info["admissible_actions"]
    obs, *_ = env.step("click[Next >]")
    assert "Page 2" in obs and "< Prev" in obs
    obs, *_ = env.step("click[back to search]")
    assert obs.endswith("Search")


def test_prompt_budget():
    env = make_env("webshop")
    env.reset(0)
    for text in env.expert_actions()[:3]:
        env.step(text)
    assert len(env.render_prompt()) / 3.5 < 2048


def test_config_errors():
    with pytest.raises(ValueError, match="split"):
        WebShopConfig(split="dev")
    with pytest.raises(ValueError, match="num_products"):
        WebShopConfig(num_products=3)


def test_search_never_takes_jax_top_k(monkeypatch):
    """As Search-QA's retrieval: numpy top-k whatever is installed (see test_search_qa)."""
    import bm25s.selection

    def refuse(*_a, **_k):
        raise AssertionError("JAX top-k used")

    monkeypatch.setattr(bm25s.selection, "JAX_IS_AVAILABLE", True)
    monkeypatch.setattr(bm25s.selection, "_topk_jax", refuse)
    env = make_env("webshop", split="test")
    env.reset(0)
    total = 0.0
    for text in env.expert_actions():
        *_, reward, done, info = env.step(text)
        total += reward
    assert done and info["success"] and total == pytest.approx(1.0)
