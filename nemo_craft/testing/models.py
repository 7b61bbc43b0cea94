"""The tests' model: the tiny model of ``conf/model/tiny.yaml`` with a test's own differences.

    cfg = tiny_model_config()                                  # conf/model/tiny.yaml, as `nemo-craft train` builds it
    cfg = tiny_model_config(num_layers=2, params_dtype="bf16")  # the same with two layers, in bf16

One builder instead of a ``ModelConfig(...)`` written out in every test: a test names only what
it changes, so the shapes the tests run are read against one model, and a change of the tiny
model reaches every test that does not say otherwise.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from nemo_craft.core.paths import CONF_DIR
from nemo_craft.core.typed import to_dataclass
from nemo_craft.models.config import ModelConfig

__all__ = ["TINY_YAML", "tiny_model_config"]

TINY_YAML = CONF_DIR / "model" / "tiny.yaml"


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """``conf/model/tiny.yaml`` over ModelConfig's defaults (the model `nemo-craft train` builds
    by default), then ``overrides``. A key that is not a ModelConfig field is a ValueError naming
    it and the fields; ``None`` for ``num_query_groups`` / ``kv_channels`` means ModelConfig's
    rule (as many groups as heads; hidden_size / heads channels), not the YAML's value."""
    fields = {**OmegaConf.to_container(OmegaConf.load(TINY_YAML)), **overrides}
    return to_dataclass(ModelConfig, fields, "model")
