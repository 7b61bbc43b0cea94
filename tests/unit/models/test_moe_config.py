"""The Qwen3-MoE model config: config.json read, layer pattern as transformers builds it, and the
one-line refusals of the mixture-of-experts fields and the expert-parallel layout."""

from __future__ import annotations

import pytest

from nemo_craft.models.config import ModelConfig
from nemo_craft.parallel.config import ParallelConfig

MOE = dict(architecture="qwen3_moe", init="random", num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=32)


@pytest.mark.parametrize("step, only", [(1, ()), (2, ()), (1, (0, 3)), (2, (1,))])
def test_layer_pattern_is_transformers(step, only, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from nemo_craft.models.tiny_hf import tiny_hf_config

    hf = tiny_hf_config("qwen3_moe", num_layers=4, decoder_sparse_step=step, mlp_only_layers=only, head_dim=16)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    built = [int(hasattr(layer.mlp, "gate")) for layer in model.model.layers]
    cfg = ModelConfig.from_hf_config(hf.to_dict())
    assert cfg.moe_layer_pattern() == built
    assert (cfg.num_experts, cfg.moe_router_topk, cfg.mlp_only_layers) == (8, 2, tuple(only))


def test_dense_families_have_no_moe_fields():
    cfg = ModelConfig()
    assert cfg.num_experts is None and cfg.moe_layer_pattern() == [0] * cfg.num_layers


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(moe_routing_replay="r3"), "use model.moe_routing_replay=r2"),
        (dict(moe_routing_replay="r4"), "model.moe_routing_replay='r4': allowed values are"),
        (dict(architecture="qwen3"), "model.num_experts=8 with architecture='qwen3', which has no expert layers"),
        (dict(moe_router_topk=9), "model.moe_router_topk=9 exceeds model.num_experts=8"),
        (dict(moe_ffn_hidden_size=None), "model.moe_ffn_hidden_size=null with model.num_experts=8"),
        (dict(mlp_only_layers=[7]), "model.mlp_only_layers=[7]: [7] are not layers"),
        (dict(mlp_only_layers=[0, 1, 2, 3]), "leaves no layer with experts"),
        (dict(moe_aux_loss_coeff=-1.0), "model.moe_aux_loss_coeff=-1.0: must be a number >= 0"),
    ],
)
def test_moe_refusals_are_one_line(change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")) as err:
        ModelConfig(**{**MOE, **change})
    assert "\n" not in str(err.value)


def test_replay_on_a_dense_model_is_refused():
    with pytest.raises(ValueError, match="needs a mixture-of-experts model"):
        ModelConfig(moe_routing_replay="r2")


@pytest.mark.parametrize(
    "parallel, world, message",
    [
        (dict(expert_model_parallel_size=3), 3, "expert_model_parallel_size=3 does not divide model.num_experts=8"),
        (dict(expert_model_parallel_size=4), 6, "world size 6 is not divisible by EP\\*ETP\\*PP"),
        (dict(expert_model_parallel_size=2, tensor_model_parallel_size=2), 4, "needs parallel.sequence_parallel=true"),
        (
            dict(expert_model_parallel_size=2, expert_tensor_parallel_size=3),
            6,
            "expert_tensor_parallel_size=3 does not",
        ),
    ],
)
def test_expert_layout_refusals(parallel, world, message):
    cfg, par = ModelConfig(**MOE), ParallelConfig(**parallel)
    with pytest.raises(ValueError, match=message) as err:
        par.data_parallel_size(world)
        cfg.validate_layout(par)
    assert "\n" not in str(err.value)


def test_ep_on_a_dense_model_is_refused():
    with pytest.raises(ValueError, match="with a dense model"):
        ModelConfig().validate_layout(ParallelConfig(expert_model_parallel_size=2))


def test_config_json_round_trip():
    cfg = ModelConfig(**MOE, mlp_only_layers=[1])
    again = ModelConfig.from_hf_config(cfg.to_hf_config(), init="random", moe_routing_replay="none")
    for name in ("num_experts", "moe_router_topk", "moe_ffn_hidden_size", "mlp_only_layers", "moe_norm_topk_prob"):
        assert getattr(again, name) == getattr(cfg, name), name


def test_vllm_with_experts_is_refused_without_cuda_naming_the_static_engine():
    from nemo_craft.rollout.vllm_backend import check_vllm_moe

    with pytest.raises(ValueError, match="use rollout.generation.backend=static") as err:
        check_vllm_moe(ModelConfig(**MOE), cuda=False)
    assert "\n" not in str(err.value)
    check_vllm_moe(ModelConfig(**MOE), cuda=True)  # on GPUs the engine's refit is the GPU build's
    check_vllm_moe(ModelConfig(), cuda=False)  # dense models are not affected
