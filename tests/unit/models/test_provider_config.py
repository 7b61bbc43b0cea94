import types

import pytest
import torch

from nemo_craft.models.config import ModelConfig
from nemo_craft.models.norm import RMSNorm
from nemo_craft.models.provider import make_transformer_config
from nemo_craft.parallel.config import ParallelConfig


def test_transformer_config_carries_the_architecture():
    cfg = ModelConfig(
        architecture="qwen2",
        add_qkv_bias=True,
        qk_layernorm=False,
        kv_channels=48,
        num_query_groups=2,
        params_dtype="bf16",
        rotary_base=1e6,
    )
    tc = make_transformer_config(cfg, ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True))
    assert (tc.normalization, tc.gated_linear_unit, tc.activation_func) == ("RMSNorm", True, torch.nn.functional.silu)
    assert tc.add_qkv_bias and not tc.add_bias_linear and not tc.qk_layernorm
    assert (tc.kv_channels, tc.num_query_groups, tc.layernorm_epsilon) == (48, 2, 1e-6)
    assert tc.params_dtype == torch.bfloat16 and tc.bf16 and tc.sequence_parallel
    assert tc.tensor_model_parallel_size == 2


def test_both_megatron_fixes_are_applied():
    from megatron.core.distributed import finalize_model_grads

    cfg = ModelConfig(num_layers=4)
    tc = make_transformer_config(
        cfg, ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)
    )
    assert tc.overlap_p2p_comm and not tc.batch_p2p_comm
    assert tc.finalize_model_grads_func is finalize_model_grads
    plain = make_transformer_config(cfg, ParallelConfig(pipeline_model_parallel_size=2))
    assert plain.finalize_model_grads_func is finalize_model_grads
    assert not plain.overlap_p2p_comm  # megatron's defaults where they are correct


def test_overrides_and_layout_errors():
    cfg = ModelConfig(num_layers=4)
    tc = make_transformer_config(cfg, ParallelConfig(), overrides={"calculate_per_token_loss": True})
    assert tc.calculate_per_token_loss
    with pytest.raises(ValueError, match="num_layers=4 is not divisible by pipeline_model_parallel_size=3"):
        make_transformer_config(cfg, ParallelConfig(pipeline_model_parallel_size=3))
    with pytest.raises(ValueError, match="perform_initialization=False leaves"):
        make_transformer_config(cfg, ParallelConfig(), overrides={"perform_initialization": False})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_hugging_face(dtype):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    config = types.SimpleNamespace(normalization="RMSNorm", params_dtype=dtype, sequence_parallel=False)
    ours, theirs = RMSNorm(config, 32, eps=1e-6), Qwen3RMSNorm(32, eps=1e-6).to(dtype)
    weight = torch.randn(32).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
    x = torch.randn(3, 5, 32).to(dtype)
    assert torch.equal(ours(x), theirs(x))
    assert ours.weight.dtype == dtype


def test_rms_norm_marks_its_weight_for_the_sequence_parallel_grad_reduce():
    for sp in (False, True):
        config = types.SimpleNamespace(normalization="RMSNorm", params_dtype=torch.float32, sequence_parallel=sp)
        assert RMSNorm(config, 8).weight.sequence_parallel is sp
    with pytest.raises(ValueError, match="normalization='LayerNorm'"):
        RMSNorm(
            types.SimpleNamespace(normalization="LayerNorm", params_dtype=torch.float32, sequence_parallel=False), 8
        )
