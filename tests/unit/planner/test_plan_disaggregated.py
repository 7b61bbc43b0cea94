"""Disaggregated layouts in the planner: the training layout on the GPUs that do not generate, and
the generation GPUs' weights, KV cache and logits, against hand computations."""

from __future__ import annotations

import json

import pytest

from nemo_craft.cli.main import main as nemo_craft
from nemo_craft.cli.plan import plan_from_overrides
from nemo_craft.planner.memory import GIB
from tests.unit.planner.conftest import hf_parameter_count

ASYNC = ["+recipe=qwen3_8b_1node", "rollout.placement=disaggregated"]


def test_training_plans_on_the_rest_and_holds_no_kv_cache():
    colocated = plan_from_overrides(["+recipe=qwen3_8b_1node"], suggest=False)
    plan = plan_from_overrides([*ASYNC, "rollout.generation_ranks=4", "plan.generation_tp=2"], suggest=False)
    assert colocated.generation is None and colocated.dp == 4 and colocated.ranks[0].memory.kv_cache > 0
    assert plan.ok and plan.dp == 2  # 8 - 4 GPUs at TP=2
    assert plan.ranks[0].memory.kv_cache == 0.0
    # the same persistent state per rank apart from the optimizer's DP share
    assert plan.ranks[0].memory.weights == colocated.ranks[0].memory.weights
    assert plan.ranks[0].memory.optimizer == pytest.approx(colocated.ranks[0].memory.optimizer * 2)


def test_generation_memory_by_hand():
    plan = plan_from_overrides([*ASYNC, "rollout.generation_ranks=2", "rollout.generation.kv_cache_gb=20"])
    gen = plan.generation
    params = hf_parameter_count(plan.model)
    assert (gen.gpus, gen.tp, gen.engines) == (2, 1, 2)  # each generation rank one engine
    assert gen.rows_per_engine == min(64, 16 * 8 // 2)  # max_batch_size capped by the engine's share
    assert gen.weights == params * 2  # bf16, the whole model
    assert gen.kv_cache == 20 * GIB  # vLLM's paged cache
    assert gen.logits == gen.rows_per_engine * plan.model.padded_vocab_size(1) * 4
    assert gen.peak == gen.weights + gen.kv_cache + gen.logits + 4 * GIB
    text = plan.format()
    assert "training: 6 GPU(s) (DP=3), no KV cache" in text
    wide = plan_from_overrides([*ASYNC, "rollout.generation_ranks=2", "plan.generation_tp=2"]).generation
    assert (wide.engines, wide.weights) == (1, params * 2 / 2)  # an engine over 2 GPUs: half the weights each
    assert f"= {gen.peak / GIB:.1f} GiB of 80" in text


def test_static_engine_caches_every_row_whole():
    plan = plan_from_overrides([*ASYNC, "rollout.generation_ranks=2", "rollout.generation.backend=static"])
    gen, m = plan.generation, plan.model
    assert gen.kv_cache == gen.rows_per_engine * 8192 * m.num_layers * 2 * m.num_query_groups * m.kv_channels * 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["+recipe=qwen3_8b_2nodes", "rollout.generation_ranks=4"], "whole nodes generate; allowed: a multiple of"),
        (["+recipe=qwen3_8b_1node", "rollout.generation_ranks=8"], "leaves no training GPU of 8; allowed: 1 to 7"),
        (
            ["+recipe=qwen3_8b_1node", "rollout.generation_ranks=2", "rollout.generation.kv_cache_gb=75"],
            "generation does not fit",
        ),
        (["+recipe=qwen3_8b_1node", "rollout.generation_ranks=4"], "4 engines > the 2 data-parallel ranks"),
    ],
)
def test_refused_splits_say_why(overrides, message):
    plan = plan_from_overrides([*overrides, "rollout.placement=disaggregated"], suggest=False)
    assert not plan.ok
    assert any(message in p for p in plan.problems), plan.problems


def test_json_has_the_generation_gpus(capsys):
    assert nemo_craft(["plan", "--json", "+recipe=qwen3_1p7b_async_2nodes"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["generation"]["gpus"] == 8 and data["generation"]["fits"]
    assert data["parallel"]["data_parallel_size"] == 8 and data["workload"]["generation_gpus"] == 8
    assert nemo_craft(["plan", "--json", "+recipe=qwen3_8b_1node"]) == 0
    assert json.loads(capsys.readouterr().out)["generation"] is None
