"""The planner's parameter count (meta-device megatron build, through `nemo-craft plan`'s config
path) of every model preset equals the closed form of its Hugging Face config, and the published
count to 0.1% (or to the published figure's own rounding, when that is coarser)."""

from __future__ import annotations

import dataclasses

import pytest

from nemo_craft.cli.plan import plan_from_overrides
from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.planner.meta_build import count_all_stages, estimate_stages
from tests.unit.planner.conftest import hf_parameter_count

# (preset, published total, the published figure's last digit in parameters)
PUBLISHED = [
    ("qwen3_1p7b", 1.72e9, 1e7),  # Qwen3-1.7B, embedding counted once (tied); card: "1.7B"
    ("qwen2p5_3b", 3.09e9, 1e7),  # Qwen2.5-3B
    ("qwen2p5_7b", 7.61e9, 1e7),  # Qwen2.5-7B
    ("qwen3_8b", 8.19e9, 1e7),  # Qwen3-8B
    ("qwen2p5_72b", 72.7e9, 1e8),  # Qwen2.5-72B
    ("llama3p1_70b", 70.6e9, 1e8),  # Llama-3.1-70B
    ("smollm2_135m", 135e6, 1e6),  # SmolLM2-135M-Instruct, tied embedding counted once; card: "135M"
]


@pytest.mark.parametrize("name,published,unit", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_total_params_match_the_published_count(name, published, unit):
    plan = plan_from_overrides([f"model={name}", "cluster=h100_1node"], suggest=False)
    assert plan.total_params == hf_parameter_count(plan.model)
    assert abs(plan.total_params - published) <= max(1e-3 * published, unit / 2), plan.total_params
    assert plan.to_dict()["total_params"] == plan.total_params


def test_qwen3_1p7b_hub_figure_counts_the_tied_head_twice():
    plan = plan_from_overrides(["model=qwen3_1p7b", "cluster=h100_1node"], suggest=False)
    untied = plan.total_params + plan.model.vocab_size * plan.model.hidden_size
    assert abs(untied - 2.03e9) <= 1e-3 * 2.03e9  # the Hugging Face Hub's "2.03B"


def test_the_total_does_not_depend_on_the_layout_except_vocab_padding():
    plan = plan_from_overrides(
        ["+recipe=llama3p1_70b_4nodes", "parallel=tp8_pp4", "parallel.virtual_pipeline_model_parallel_size=2"],
        suggest=False,
    )
    # planned, but refused for RL: rollouts cannot run on virtual pipeline stages
    assert [p for p in plan.problems if "virtual_pipeline_model_parallel_size=2: rollouts" in p], plan.problems
    assert plan.padded_vocab == 129024  # 128256 padded to a multiple of 128 x 8
    assert plan.total_params_unpadded == hf_parameter_count(plan.model)
    assert plan.total_params == hf_parameter_count(plan.model) + 2 * (129024 - 128256) * 8192
    # interleaved: rank r holds chunks of 10 layers starting at layers 10r+1 and 10r+41
    assert [[(c.first_layer, c.num_layers) for c in r.stage.chunks] for r in plan.ranks] == [
        [(1, 10), (41, 10)],
        [(11, 10), (51, 10)],
        [(21, 10), (61, 10)],
        [(31, 10), (71, 10)],
    ]


@pytest.mark.parametrize(
    "name,tp,pp,vpp",
    [
        ("tiny", 2, 2, 2),
        ("qwen3_1p7b", 2, 2, None),
        ("qwen3_1p7b", 1, 4, 7),
        ("qwen2p5_7b", 4, 4, None),
    ],
)
def test_the_layout_search_estimate_equals_the_full_meta_build(name, tp, pp, vpp):
    from omegaconf import OmegaConf

    from nemo_craft.core.paths import CONF_DIR
    from nemo_craft.core.typed import to_dataclass
    from nemo_craft.models.config import ModelConfig

    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"), resolve=True)
    model = to_dataclass(ModelConfig, values, "model")
    parallel = ParallelConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp
    )
    assert estimate_stages(model, parallel) == count_all_stages(model, parallel)
    untied = dataclasses.replace(model, tie_word_embeddings=False)
    assert estimate_stages(untied, parallel) == count_all_stages(untied, parallel)
