"""nemo_craft/testing/models.py: the tests' tiny model is the model `nemo-craft train` builds by
default, and a test's overrides are applied on top of it (or refused when misspelt)."""

import pytest

from nemo_craft.config import compose, to_dataclass
from nemo_craft.models.config import ModelConfig
from nemo_craft.testing.models import tiny_model_config


def test_without_overrides_it_is_the_default_run_model():
    assert tiny_model_config() == to_dataclass(ModelConfig, compose().model, "model")


def test_overrides_replace_the_yaml_and_none_restores_the_dataclass_rule():
    cfg = tiny_model_config(num_layers=2, hidden_size=64, num_query_groups=None, kv_channels=None)
    assert (cfg.num_layers, cfg.hidden_size) == (2, 64)
    assert (cfg.num_query_groups, cfg.kv_channels) == (cfg.num_attention_heads, 64 // cfg.num_attention_heads)
    assert cfg.tie_word_embeddings and cfg.make_vocab_size_divisible_by == 16  # the YAML's, not overridden


def test_a_misspelt_field_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_layer'\] in config section 'model'"):
        tiny_model_config(num_layer=2)
