"""The model-family registry, model=from_hf and where the initial weights come from.

Each conf/model YAML is checked against a config.json of its family written by transformers
(the tiny-checkpoint config class, at the YAML's sizes): model=from_hf must read back the YAML's
architecture, and the named YAML must pass the start-up check against it."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from omegaconf import OmegaConf

from nemo_craft.config import CONF_DIR, RunConfig, compose
from nemo_craft.models.config import ModelConfig
from nemo_craft.models.families import family, family_for_hf_config, family_names, register_family
from nemo_craft.models.hf_config import ARCHITECTURE_FIELDS

NAMED = sorted(
    p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem not in ("tiny", "qwen3_moe_tiny", "from_hf")
)


def _yaml_model(name: str) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")))


def _moe_kwargs(cfg: ModelConfig) -> dict:
    if cfg.num_experts is None:
        return {}
    return dict(
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.moe_router_topk,
        moe_intermediate_size=cfg.moe_ffn_hidden_size,
        decoder_sparse_step=cfg.decoder_sparse_step,
        mlp_only_layers=cfg.mlp_only_layers,
        norm_topk_prob=cfg.moe_norm_topk_prob,
    )


def _write_config_json(cfg: ModelConfig, out_dir, **change) -> str:
    """A config.json for ``cfg``'s architecture written by transformers' config class of its
    family (not by this project's to_hf_config), with ``change`` applied."""
    from nemo_craft.models.tiny_hf import tiny_hf_config

    hf = tiny_hf_config(
        cfg.architecture,
        tied=cfg.tie_word_embeddings,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.kv_channels if family(cfg.architecture).hf_head_dim else None,
        vocab_size=cfg.vocab_size,
        rope_theta=cfg.rotary_base,
        llama3_rope_scaling=cfg.rope_scaling_factor if cfg.rope_scaling == "llama3" else None,
        **_moe_kwargs(cfg),
    ).to_dict()
    hf.update(max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_epsilon)
    hf.update(change)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f)
    return str(out_dir)


def _model(overrides) -> ModelConfig:
    return RunConfig.from_omegaconf(compose(overrides)).model


@pytest.mark.parametrize("name", NAMED)
def test_from_hf_reads_back_every_named_model(name, tmp_path):
    yaml_cfg = _yaml_model(name)
    hf_dir = _write_config_json(yaml_cfg, tmp_path)
    from_hf = _model(["model=from_hf", f"model.hf_path={hf_dir}"])
    named = _model([f"model={name}", f"model.hf_path={hf_dir}"])
    for field in ARCHITECTURE_FIELDS:
        assert getattr(from_hf, field) == getattr(named, field) == getattr(yaml_cfg, field), field
    assert from_hf.init == named.init == "pretrained"
    named.check_weights()
    from_hf.check_weights()


def test_from_hf_records_the_architecture_it_read(tmp_path):
    hf_dir = _write_config_json(_yaml_model("smollm2_135m"), tmp_path)
    cfg = compose(["model=from_hf", f"model.hf_path={hf_dir}", "model.params_dtype=bf16"])
    run = RunConfig.from_omegaconf(cfg)
    assert (cfg.model.architecture, cfg.model.num_layers, cfg.model.kv_channels) == ("llama", 30, 64)
    assert run.model.params_dtype == "bf16"  # fields that are not the architecture keep their overrides


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("qwen3_1p7b", dict(num_hidden_layers=24), "model.num_layers=28 but {}/config.json has num_hidden_layers=24"),
        ("qwen3_1p7b", dict(tie_word_embeddings=False), "model.tie_word_embeddings=True but {}/config.json has"),
        (
            "qwen2p5_7b",
            dict(model_type="llama"),
            "model.architecture='qwen2' but {}/config.json has model_type='llama'",
        ),
        ("llama3p1_70b", dict(rms_norm_eps=1e-6), "model.norm_epsilon=1e-05 but {}/config.json has rms_norm_eps=1e-06"),
    ],
)
def test_a_named_model_that_disagrees_with_its_checkpoint_is_refused(name, change, message, tmp_path):
    yaml_cfg = _yaml_model(name)
    hf_dir = _write_config_json(yaml_cfg, tmp_path, **change)
    named = _model([f"model={name}", f"model.hf_path={hf_dir}"])
    with pytest.raises(ValueError, match="^" + message.format(hf_dir).replace("(", r"\(").replace(")", r"\)")):
        named.check_weights()


def test_weights_come_from_where_they_are_asked_for(tmp_path):
    hf_dir = _write_config_json(_yaml_model("qwen3_1p7b"), tmp_path)
    _model([]).check_weights()  # the tiny model: random init, no flags
    with pytest.raises(ValueError, match=rf"model.hf_path={hf_dir} with model.init=random.*pass model=from_hf"):
        _model([f"model.hf_path={hf_dir}"]).check_weights()
    with pytest.raises(ValueError, match="model.init=pretrained needs model.hf_path=DIR.*model.init=random"):
        _model(["model=smollm2_135m"]).check_weights()
    _model(["model=smollm2_135m", "model.init=random"]).check_weights()
    with pytest.raises(ValueError, match=f"model.hf_path={tmp_path}/absent: no config.json there"):
        _model(["model=qwen3_1p7b", f"model.hf_path={tmp_path}/absent"]).check_weights()


def test_from_hf_refuses_a_missing_path_and_a_field_that_disagrees(tmp_path):
    hf_dir = _write_config_json(_yaml_model("qwen3_8b"), tmp_path)
    with pytest.raises(ValueError, match=r"model=from_hf .*set model.hf_path=DIR"):
        _model(["model=from_hf"])
    with pytest.raises(ValueError, match=rf"model.hidden_size=1024 but {hf_dir}/config.json has hidden_size=4096"):
        _model(["model=from_hf", f"model.hf_path={hf_dir}", "model.hidden_size=1024"])


def test_the_registry_finds_families_and_refuses_clashes():
    assert family_names()[:3] == ("llama", "qwen2", "qwen3")
    assert family_for_hf_config({"model_type": "qwen2"}).name == "qwen2"
    assert family_for_hf_config({"architectures": ["Qwen3ForCausalLM"]}).name == "qwen3"  # no model_type
    with pytest.raises(ValueError, match=r"model_type='gemma' is not supported"):
        family_for_hf_config({"model_type": "gemma", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ValueError, match=r"model.architecture='gpt2': allowed values are \('llama', 'qwen2', 'qwen3'"):
        family("gpt2")
    assert register_family(family("llama")) is family("llama")  # the same record again: a no-op
    with pytest.raises(ValueError, match="clashes with the registered family 'llama'"):
        register_family(dataclasses.replace(family("llama"), name="llama2"))  # model_type 'llama' is taken
    with pytest.raises(ValueError, match="normalization='LayerNorm'"):
        dataclasses.replace(family("llama"), name="x", model_type="x", normalization="LayerNorm")


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_config_json_names_the_family_class_vllm_builds(name):
    from transformers import AutoConfig

    cfg = ModelConfig(architecture=name, **family(name).fixed)
    written = cfg.to_hf_config()
    assert written["architectures"] == [family(name).hf_architecture] and written["model_type"] == name
    assert type(AutoConfig.for_model(**written)).__name__ == family(name).hf_config_class
    assert ModelConfig.from_hf_config(written).architecture == name


def test_the_gguf_converter_writes_the_family_class(tmp_path):
    from nemo_craft.models.gguf import _write_config
    from nemo_craft.models.tiny_hf import tiny_hf_config

    hf = tiny_hf_config("llama")
    hf.architectures = None  # as transformers' GGUF loader leaves it
    _write_config(hf, str(tmp_path), "float32", model_class="SomethingElse")
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    mistral = tiny_hf_config("llama").to_dict() | {"model_type": "mistral", "architectures": None}
    _write_config(type("Cfg", (), {"to_dict": lambda self: dict(mistral)})(), str(tmp_path), "float32", "MistralX")
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MistralX"]
