"""Every recipe in conf/recipe plans without a problem: it divides and fits its cluster."""

from __future__ import annotations

import pytest

from nemo_craft.cli.plan import plan_from_overrides
from nemo_craft.config import CONF_DIR

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))


def test_each_model_has_a_single_node_or_explains_why_not_and_a_multi_node_recipe():
    models = {r.replace("_async", "").rsplit("_", 1)[0] for r in RECIPES}
    assert models == {
        "qwen3_1p7b",
        "qwen2p5_3b",
        "qwen2p5_7b",
        "qwen3_8b",
        "qwen2p5_72b",
        "llama3p1_70b",
        "qwen3_30b_a3b",
        "qwen3_235b_a22b",
    }
    for model in models:
        assert any(r.startswith(model) and not r.endswith("_1node") for r in RECIPES), model


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_divides_and_fits(recipe):
    plan = plan_from_overrides([f"+recipe={recipe}"], suggest=False)
    assert plan.ok, plan.problems
    assert plan.cluster.nodes == (1 if recipe.endswith("_1node") else int(recipe.rsplit("_", 1)[1][:-5]))
