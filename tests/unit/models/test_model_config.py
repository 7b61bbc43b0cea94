import glob
import json
import os

import pytest
from omegaconf import OmegaConf

from nemo_craft.models.config import ModelConfig
from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.parallel.config import ParallelConfig

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "..", "conf", "model")


def test_defaults_fill_derived_fields():
    cfg = ModelConfig(hidden_size=128, num_attention_heads=4, num_query_groups=None, kv_channels=None)
    assert cfg.num_query_groups == 4 and cfg.kv_channels == 32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(architecture="gpt2"), r"architecture='gpt2'.*allowed values"),
        (dict(num_layers=0), r"num_layers=0: must be an integer >= 1"),
        (dict(hidden_size=12.5), r"hidden_size=12.5"),
        (
            dict(num_attention_heads=6, num_query_groups=4),
            r"num_attention_heads=6 is not divisible by .*num_query_groups=4",
        ),
        (dict(hidden_size=130, num_attention_heads=4), r"hidden_size=130 .*set model.kv_channels"),
        (dict(kv_channels=31), r"kv_channels=31: RoPE needs an even"),
        (dict(params_dtype="fp16"), r"params_dtype='fp16'.*\('fp32', 'bf16'\)"),
        (dict(hidden_dropout=1.0), r"hidden_dropout=1.0: must be a probability"),
        (dict(norm_epsilon=0), r"norm_epsilon=0: must be a number > 0"),
        (dict(rope_scaling="yarn"), r"rope_scaling='yarn'.*'llama3'"),
        (dict(core_attention="flash"), r"core_attention='flash'.*\('sdpa', 'local'\)"),
        (
            dict(architecture="qwen2", add_qkv_bias=False, qk_layernorm=False),
            r"add_qkv_bias=False does not match .*'qwen2'",
        ),
        (dict(architecture="llama", qk_layernorm=True), r"qk_layernorm=True does not match .*'llama'.*'qwen3'"),
    ],
)
def test_invalid_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "vocab, div, tp, padded",
    [
        (128, 128, 1, 128),
        (128, 128, 2, 256),
        (300, 128, 1, 384),
        (300, 128, 2, 512),
        (151936, 128, 8, 152576),
        (128256, 128, 8, 129024),
        (104, 16, 4, 128),
    ],
)
def test_padded_vocab_is_a_multiple_of_divisor_times_tp(vocab, div, tp, padded):
    cfg = ModelConfig(vocab_size=vocab, make_vocab_size_divisible_by=div)
    assert cfg.padded_vocab_size(tp) == padded
    assert padded % (div * tp) == 0 and padded >= vocab


@pytest.mark.parametrize(
    "layout, match",
    [
        (dict(tensor_model_parallel_size=8), r"num_attention_heads=4 is not divisible by tensor_model_parallel_size=8"),
        (dict(tensor_model_parallel_size=4), r"num_query_groups=2 is not divisible by tensor_model_parallel_size=4"),
        (dict(pipeline_model_parallel_size=3), r"num_layers=4 is not divisible by pipeline_model_parallel_size=3"),
        (
            dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=4),
            r"num_layers=4 is not divisible by .*virtual_pipeline_model_parallel_size=4 = 8.*\[1, 2, 4\]",
        ),
    ],
)
def test_layout_errors_name_value_and_fix(layout, match):
    cfg = ModelConfig(num_layers=4, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=384)
    with pytest.raises(ValueError, match=match):
        cfg.validate_layout(ParallelConfig(**layout))


def test_ffn_must_split_over_tp():
    cfg = ModelConfig(num_attention_heads=4, num_query_groups=4, ffn_hidden_size=130)
    with pytest.raises(ValueError, match=r"ffn_hidden_size=130 is not divisible by tensor_model_parallel_size=4"):
        cfg.validate_layout(ParallelConfig(tensor_model_parallel_size=4))


def test_valid_layouts_pass():
    cfg = ModelConfig(num_layers=4, num_attention_heads=4, num_query_groups=2)
    for layout in (
        dict(),
        dict(tensor_model_parallel_size=2, sequence_parallel=True),
        dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
    ):
        cfg.validate_layout(ParallelConfig(**layout))


def _hf(arch, **kwargs):
    from nemo_craft.models.tiny_hf import tiny_hf_config

    return tiny_hf_config(arch, **kwargs)


@pytest.mark.parametrize(
    "arch, bias, qk_norm", [("qwen2", True, False), ("qwen3", False, True), ("llama", False, False)]
)
def test_from_hf_config_per_architecture(arch, bias, qk_norm):
    head_dim = None if arch == "qwen2" else 32
    cfg = ModelConfig.from_hf_config(_hf(arch, tied=True, head_dim=head_dim, rope_theta=1e6), params_dtype="bf16")
    assert (cfg.architecture, cfg.add_qkv_bias, cfg.qk_layernorm) == (arch, bias, qk_norm)
    assert cfg.kv_channels == (16 if arch == "qwen2" else 32)
    assert (
        cfg.num_layers,
        cfg.hidden_size,
        cfg.ffn_hidden_size,
        cfg.num_attention_heads,
        cfg.num_query_groups,
        cfg.vocab_size,
    ) == (2, 64, 160, 4, 2, 320)
    assert cfg.tie_word_embeddings and cfg.rotary_base == 1e6 and cfg.params_dtype == "bf16"
    assert cfg.rope_scaling is None


def test_from_hf_config_reads_dicts_paths_and_v4_rope(tmp_path):
    d = _hf("llama").to_dict()
    d.pop("rope_parameters")
    d.update(
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    )
    (tmp_path / "config.json").write_text(json.dumps(d))
    for source in (d, str(tmp_path), str(tmp_path / "config.json")):
        cfg = ModelConfig.from_hf_config(source)
        assert (cfg.rotary_base, cfg.rope_scaling, cfg.rope_scaling_factor) == (500000.0, "llama3", 32.0)
    assert ModelConfig.from_hf_config(str(tmp_path)).hf_path == str(tmp_path)


def test_to_hf_config_round_trips():
    cfg = ModelConfig(
        architecture="llama",
        qk_layernorm=False,
        rope_scaling="llama3",
        rope_scaling_factor=8.0,
        rotary_base=500000.0,
        kv_channels=64,
        num_query_groups=2,
    )
    back = ModelConfig.from_hf_config(cfg.to_hf_config())
    for name in ModelConfig.field_names():
        if name not in (
            "hf_path",
            "tokenizer",
            "init_method_std",
            "hidden_dropout",
            "make_vocab_size_divisible_by",
            "params_dtype",
        ):
            assert getattr(back, name) == getattr(cfg, name), name


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(model_type="mistral"), r"model_type='mistral' is not supported"),
        (dict(hidden_act="gelu"), r"hidden_act='gelu'"),
        (dict(use_sliding_window=True), r"sliding-window attention is not supported"),
        (dict(mlp_bias=True), r"mlp_bias=true"),
        (dict(attention_bias=True), r"attention_bias=true .*output projection"),
        (
            dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=4.0)),
            r"rope_type='yarn' is not supported",
        ),
        (
            dict(rope_parameters=dict(rope_type="llama3", rope_theta=1e4, factor=8.0, low_freq_factor=2.0)),
            r"low_freq_factor=2.0 is not supported",
        ),
    ],
)
def test_from_hf_config_refuses_what_megatron_would_get_wrong(change, match):
    d = _hf("llama").to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_config(d)


def test_qwen2_attention_bias_is_its_normal_qkv_bias():
    d = _hf("qwen2").to_dict()
    d["attention_bias"] = True  # some Qwen2 configs carry it; Qwen2 always has q/k/v bias
    assert ModelConfig.from_hf_config(d).add_qkv_bias


# from_hf.yaml has no architecture of its own (tests/unit/models/test_families.py reads it from checkpoints)
@pytest.mark.parametrize(
    "path",
    sorted(set(glob.glob(os.path.join(CONF, "*.yaml"))) - {os.path.join(CONF, "from_hf.yaml")}),
    ids=os.path.basename,
)
def test_model_presets_are_valid_configs(path):
    fields = OmegaConf.to_container(OmegaConf.load(path))
    cfg = ModelConfig(**fields)
    assert cfg.padded_vocab_size(1) >= cfg.vocab_size


def test_tiny_preset_fits_the_char_tokenizer_without_padding():
    cfg = ModelConfig(**OmegaConf.to_container(OmegaConf.load(os.path.join(CONF, "tiny.yaml"))))
    assert cfg.tokenizer == "char" and cfg.vocab_size >= CharTokenizer().vocab_size
    for tp in (1, 2, 4, 8):
        assert cfg.padded_vocab_size(tp) == cfg.vocab_size
    for layout in (
        dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2),
        dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
    ):
        cfg.validate_layout(ParallelConfig(**layout))
