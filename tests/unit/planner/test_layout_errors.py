"""A layout that does not divide, or does not fit, is refused with the value, the reason and a
layout that would work; `nemo-craft plan` exits 1 for it and 2 for a bad config."""

from __future__ import annotations

import pytest

from nemo_craft.cli.plan import main, plan_from_overrides

RECIPE_7B = ["+recipe=qwen2p5_7b_1node"]


def test_tp_that_does_not_divide_the_heads():
    plan = plan_from_overrides(RECIPE_7B + ["parallel=tp8"])
    assert not plan.ok and not plan.ranks
    assert plan.problems[0] == (
        "model.num_attention_heads=28 is not divisible by parallel.tensor_model_parallel_size=8; TP sizes "
        "that divide the heads, the key/value heads and the MLP and fit in a node of 8 GPUs: [1, 2, 4]"
    )
    assert any(p.startswith("model.num_query_groups=4 is not divisible") for p in plan.problems)
    assert plan.suggestion is not None and plan.suggestion.parallel.tensor_model_parallel_size == 2


def test_layers_that_do_not_divide_by_pp_times_vpp():
    plan = plan_from_overrides(RECIPE_7B + ["parallel.pipeline_model_parallel_size=8"])
    assert any(
        p.startswith(
            "model.num_layers=28 is not divisible by parallel.pipeline_model_parallel_size=8 = 8; "
            "PP x VPP must be one of [1, 2, 4, 7, 14, 28]"
        )
        for p in plan.problems
    ), plan.problems
    plan = plan_from_overrides(
        RECIPE_7B + ["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=3"]
    )
    assert any(
        p.startswith(
            "model.num_layers=28 is not divisible by parallel.pipeline_model_parallel_size=2 x "
            "virtual_pipeline_model_parallel_size=3 = 6"
        )
        for p in plan.problems
    ), plan.problems


def test_gpus_not_divisible_by_the_model_parallel_size():
    plan = plan_from_overrides(["+recipe=qwen3_8b_1node", "parallel.pipeline_model_parallel_size=3"])
    assert plan.problems[0].startswith(
        "GPUs = cluster.nodes x cluster.gpus_per_node = 1 x 8 = 8 is not divisible by TP x PP x CP = 2 x 3 x 1 = 6"
    )


def test_a_layout_that_does_not_fit_names_the_rank_and_a_layout_that_fits():
    plan = plan_from_overrides(["+recipe=qwen2p5_72b_4nodes", "cluster=h100_1node", "parallel=tp8"])
    assert len(plan.problems) == 1 and plan.problems[0].startswith("does not fit: pipeline rank 0 needs ")
    assert plan.problems[0].endswith("> cluster.gpu_memory_gb=80")
    s = plan.suggestion
    assert s.more_nodes and s.cluster.nodes == 4
    assert (s.parallel.tensor_model_parallel_size, s.parallel.pipeline_model_parallel_size) == (8, 2)
    assert "cluster.nodes=4" in s.overrides()


def test_cli_exit_codes_and_messages(capsys):
    assert main(RECIPE_7B + ["parallel=tp8"]) == 1
    out = capsys.readouterr().out
    assert "error: model.num_attention_heads=28 is not divisible" in out
    assert "would fit: parallel.tensor_model_parallel_size=2 " in out
    assert main(RECIPE_7B) == 0
    assert "fits: peak " in capsys.readouterr().out


@pytest.mark.parametrize(
    "override,message",
    [
        ("parallel.sequence_parallel=true", "sequence_parallel=true needs tensor_model_parallel_size > 1"),
        ("model=no_such_model", "bad config override"),
        ("plan.recompute=sometimes", "plan.recompute='sometimes'"),
    ],
)
def test_bad_config_is_exit_2_with_the_reason(capsys, override, message):
    assert main(["parallel=dp", "parallel.tensor_model_parallel_size=1", override]) == 2
    assert message in capsys.readouterr().err
