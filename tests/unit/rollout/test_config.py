import pytest
from omegaconf import OmegaConf

from nemo_craft.config import compose
from nemo_craft.rollout.config import GenerationConfig, RolloutConfig


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("backend", "sglang", "backend"),
        ("temperature", -0.1, "temperature"),
        ("top_p", 0.0, "top_p"),
        ("top_p", 1.5, "top_p"),
        ("top_k", -1, "top_k"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("stop_strings", "</action>", "list of strings"),
        ("max_batch_size", 0, "max_batch_size"),
        ("pp_microbatch_tokens", 0, "pp_microbatch_tokens"),
        ("kv_cache_gb", 0, "kv_cache_gb"),
        ("kv_cache_gb", -1.5, "kv_cache_gb"),
        ("kv_cache_gb", "4", "kv_cache_gb"),
        ("kv_cache_gb", True, "kv_cache_gb"),
        ("max_tokens_per_step", 0, "max_tokens_per_step"),
        ("max_tokens_per_step", 32, "max_tokens_per_step=32 < max_batch_size=64"),
        ("cuda_graphs", "yes", "cuda_graphs"),
    ],
)
def test_generation_config_errors_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**{field: value})


def test_dynamic_knobs_bind_only_where_the_dynamic_backend_may_run():
    long = dict(max_sequence_length=32768, max_tokens_per_step=8192)
    for backend in ("auto", "dynamic"):
        with pytest.raises(ValueError, match="max_tokens_per_step=8192 < max_sequence_length - 1 = 32767"):
            GenerationConfig(backend=backend, **long)
    GenerationConfig(backend="static", max_batch_size=64, max_tokens_per_step=8, **{"max_sequence_length": 32768})
    with pytest.raises(ValueError, match="cuda_graphs=true applies to the dynamic backend"):
        GenerationConfig(backend="static", cuda_graphs=True)
    assert GenerationConfig(backend="auto", cuda_graphs=True, kv_cache_gb=8).kv_cache_gb == 8


def test_generation_config_defaults():
    cfg = GenerationConfig(temperature=0.0, stop_strings=["</action>"])
    assert cfg.greedy and cfg.stop_strings == ("</action>",)


def test_rollout_config_reads_the_run_configs_section():
    section = OmegaConf.to_container(compose([]).rollout)  # every field, the YAML's and the defaults
    cfg = RolloutConfig(**section)  # the nested sections as dicts
    gen = cfg.generation_config()
    val = cfg.generation_config(validation=True)
    generation = section["generation"]
    assert gen.max_new_tokens == generation["max_new_tokens"] and gen.temperature == generation["temperature"]
    assert val.temperature == section["validation"]["temperature"] != gen.temperature
    assert (val.top_p, val.top_k) == (section["validation"]["top_p"], section["validation"]["top_k"])
    for knob in ("backend", "kv_cache_gb", "max_tokens_per_step", "cuda_graphs", "max_new_tokens"):
        assert getattr(gen, knob) == generation[knob] == getattr(val, knob)
    assert RolloutConfig(generation=GenerationConfig(**generation)).generation == gen


@pytest.mark.parametrize(
    "field,value",
    [
        ("group_size", 0),
        ("max_turns", 0),
        ("observation_message", "x"),
        ("generation.top_p", 2.0),
        ("generation.backend", "x"),
        ("max_tokens_per_episode", 0),
        ("generation.kv_cache_gb", 0.0),
        ("generation.max_tokens_per_step", 1),
        ("generation.cuda_graphs", 1),
        ("validation.temperature", -1.0),
    ],
)
def test_rollout_config_errors(field, value):
    section, _, name = field.rpartition(".")
    with pytest.raises(ValueError, match=name):
        RolloutConfig(**({section: {name: value}} if section else {name: value}))
