"""The planner on a mixture of experts: total and active parameters against a full meta build
and a closed form of the config, the experts / router / dispatcher terms of the memory, the
refusals of an expert layout that does not divide, and the MoE recipes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nemo_craft.cli.plan import main as plan_main
from nemo_craft.cli.plan import plan_from_overrides
from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.planner.meta_build import _build_chunk, count_all_stages, estimate_stages

TINY = ["model=qwen3_moe_tiny", "cluster=h100_1node"]


def _active_closed_form(m, vocab_rows: int) -> int:
    """Parameters one token passes through, from the config's fields alone: attention, norms,
    per layer either the dense MLP or the router plus top-k experts, embedding(s), final norm."""
    h, d = m.hidden_size, m.kv_channels
    q, kv = m.num_attention_heads * d, m.num_query_groups * d
    attention = h * q + 2 * h * kv + q * h + 2 * h + (2 * d if m.qk_layernorm else 0)
    sparse = m.moe_layer_pattern()
    mlp = [
        (h * m.num_experts + m.moe_router_topk * 3 * h * m.moe_ffn_hidden_size) if s else 3 * h * m.ffn_hidden_size
        for s in sparse
    ]
    embeddings = vocab_rows * h * (1 if m.tie_word_embeddings else 2)
    return len(sparse) * attention + sum(mlp) + embeddings + h


def _meta_count(model_cfg) -> int:
    """Every parameter of the whole model, one unsplit meta build (no planner arithmetic)."""
    model = _build_chunk(model_cfg, ParallelConfig(), 0, None, pre=True, post=True)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "layout",
    [
        [],
        ["parallel.expert_model_parallel_size=2"],
        ["parallel.expert_model_parallel_size=4", "parallel=tp2", "parallel.expert_tensor_parallel_size=2"],
        [
            "parallel.expert_model_parallel_size=4",
            "parallel=tp2",
            "parallel.pipeline_model_parallel_size=2",
            "parallel.expert_tensor_parallel_size=1",
        ],
    ],
    ids=["ep1", "ep2", "ep4_tp2_etp2", "ep4_tp2_pp2_etp1"],
)
def test_tiny_moe_total_and_active_params_equal_a_meta_build_and_the_closed_form(layout):
    plan = plan_from_overrides(TINY + layout, suggest=False)
    assert plan.ok, plan.problems
    m = plan.model
    assert plan.total_params == _meta_count(m)
    assert plan.active_params == _active_closed_form(m, plan.padded_vocab)
    assert plan.active_params < plan.total_params
    dense_layer_model = dataclasses.replace(m, mlp_only_layers=(1,))  # a dense layer among sparse ones
    assert _active_closed_form(dense_layer_model, 128) != _active_closed_form(m, 128)


def test_plan_json_carries_total_and_active_params(capsys):
    assert plan_main(["--json", "--no-suggest", *TINY, "parallel.expert_model_parallel_size=2"]) == 0
    out = json.loads(capsys.readouterr().out)
    plan = plan_from_overrides(TINY, suggest=False)
    assert out["total_params"] == plan.total_params and out["active_params"] == plan.active_params
    assert out["ranks"][0]["memory_bytes"]["expert_weights"] > 0
    assert out["ranks"][0]["memory_bytes"]["dispatcher_buffers"] > 0


def test_the_text_plan_names_the_active_params_and_the_expert_layout(capsys):
    assert plan_main(["--no-suggest", *TINY, "parallel.expert_model_parallel_size=2"]) == 0
    out = capsys.readouterr().out
    plan = plan_from_overrides(TINY, suggest=False)
    assert f"{plan.active_params:,} active" in out and "EP=2 ETP=1" in out and "a2a" in out


@pytest.mark.parametrize("name", ["qwen3_30b_a3b", "qwen3_235b_a22b"])
def test_published_total_and_active_params(name):
    published = {"qwen3_30b_a3b": (30.5e9, 3.3e9), "qwen3_235b_a22b": (235e9, 22e9)}[name]
    plan = plan_from_overrides([f"model={name}", "cluster=h100_1node"], suggest=False)
    assert plan.active_params == _active_closed_form(plan.model, plan.counted_vocab or plan.padded_vocab)
    # the model cards' last digit: 30.5B / 3.3B, 235B / 22B (the cards cut, not round: 3.35B reads "3.3B")
    unit = 0.1e9 if name.endswith("a3b") else 1e9
    assert 0 <= plan.total_params_unpadded - published[0] < unit
    assert 0 <= plan.active_params - published[1] < unit


def test_expert_weights_router_and_optimizer_terms():
    plan = plan_from_overrides(TINY + ["parallel.expert_model_parallel_size=2"], suggest=False)
    rank, mem = plan.ranks[0].stage, plan.ranks[0].memory
    assert rank.expert_params * 2 == plan.expert_params  # half the experts on each EP rank
    assert mem.expert_weights == rank.expert_params * 4  # fp32 tiny model
    assert mem.router_weights == rank.router_params * 4 > 0
    # the router is frozen: no gradient for it
    assert mem.grads == (rank.params - rank.router_params) * 4
    thawed = plan_from_overrides(
        TINY + ["parallel.expert_model_parallel_size=2", "model.moe_freeze_router=false"], suggest=False
    )
    assert thawed.ranks[0].memory.grads == rank.params * 4


def test_estimate_equals_the_full_meta_build_with_experts():
    plan = plan_from_overrides(TINY + ["model.mlp_only_layers=[0]"], suggest=False)
    for ep, tp, etp, pp in [(2, 1, None, 1), (4, 2, 1, 2), (8, 2, 2, 1)]:
        parallel = ParallelConfig(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            sequence_parallel=tp > 1,
            expert_model_parallel_size=ep,
            expert_tensor_parallel_size=etp,
        )
        assert estimate_stages(plan.model, parallel) == count_all_stages(plan.model, parallel)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["parallel.expert_model_parallel_size=3"],
            "parallel.expert_model_parallel_size=3 does not divide model.num_experts=8",
        ),
        (
            ["cluster.nodes=1", "cluster.gpus_per_node=2", "parallel.expert_model_parallel_size=4"],
            "GPUs = 2 is not divisible by EP x ETP x PP",
        ),
    ],
)
def test_an_expert_layout_that_does_not_divide_is_refused_in_one_line(overrides, message):
    plan = plan_from_overrides(TINY + overrides, suggest=False)
    assert not plan.ok
    assert [p for p in plan.problems if message in p and "\n" not in p], plan.problems
