import pytest
from omegaconf import OmegaConf

from nemo_craft.config import CONF_DIR
from nemo_craft.rollout import GenerationConfig, RolloutConfig


@pytest.mark.parametrize("field,value,match", [
    ("backend", "vllm", "backend"),
    ("temperature", -0.1, "temperature"),
    ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("top_k", -1, "top_k"),
    ("max_new_tokens", 0, "max_new_tokens"),
    ("stop_strings", "</action>", "list of strings"),
    ("max_batch_size", 0, "max_batch_size"),
    ("pp_microbatch_tokens", 0, "pp_microbatch_tokens"),
])
def test_generation_config_errors_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**{field: value})


def test_generation_config_defaults():
    cfg = GenerationConfig(temperature=0.0, stop_strings=["</action>"])
    assert cfg.greedy and cfg.stop_strings == ("</action>",)


def test_rollout_config_reads_the_run_configs_section():
    section = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").rollout)
    cfg = RolloutConfig(**section)
    gen = cfg.generation_config()
    val = cfg.generation_config(validation=True)
    assert gen.max_new_tokens == section["max_tokens_per_turn"] and gen.temperature == section["temperature"]
    assert val.temperature == section["val_temperature"]


@pytest.mark.parametrize("field,value", [("group_size", 0), ("max_turns", 0), ("observation_message", "x"),
                                         ("top_p", 2.0), ("backend", "x"), ("max_tokens_per_episode", 0)])
def test_rollout_config_errors(field, value):
    with pytest.raises(ValueError, match=field):
        RolloutConfig(**{field: value})
