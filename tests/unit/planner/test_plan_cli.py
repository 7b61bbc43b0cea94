"""`nemo-craft plan --json` prints one JSON object with the same figures as the table."""

from __future__ import annotations

import json

from nemo_craft.cli.main import main as nemo_craft
from nemo_craft.planner.memory import GIB
from tests.unit.planner.conftest import hf_parameter_count


def test_json_is_one_object_with_the_whole_models_count(capsys):
    assert nemo_craft(["plan", "--json", "+recipe=qwen3_8b_1node"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert out.count("\n") == 1  # one object, one line
    assert data["ok"] and data["fits"] and data["problems"] == []
    assert data["model"]["name"] == "qwen3_8b"
    assert data["total_params"] == 8_191_783_936  # TP=2 pads the vocabulary by 128 rows (x2: untied)
    assert data["total_params_unpadded"] == 8_190_735_360
    assert data["parallel"]["data_parallel_size"] == 4 and data["cluster"]["world_size"] == 8
    (rank,) = data["ranks"]
    assert rank["params"] * 2 - data["total_params"] < 1e6  # TP=2: each rank holds half (norms replicated)
    mem = rank["memory_bytes"]
    assert (
        abs(
            mem["peak"]
            - (mem["persistent"] + max(mem["train_activations"], mem["experience"], mem["kv_cache"]) + mem["overhead"])
        )
        < 1
    )
    assert rank["memory_gib"]["peak"] == round(mem["peak"] / GIB, 3) == data["peak_gib"]
    assert data["workload"]["seq_length"] == 8192 and data["workload"]["trajectories_per_step"] == 128


def test_refused_layout_still_prints_json_with_the_problems_and_the_count(capsys):
    assert nemo_craft(["plan", "--json", "+recipe=qwen2p5_7b_1node", "parallel=tp8"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert not data["ok"] and not data["fits"] and data["ranks"] == []
    assert data["problems"][0].startswith("model.num_attention_heads=28")
    assert data["suggestion"]["overrides"][0] == "parallel.tensor_model_parallel_size=2"
    assert data["total_params"] == 7_615_616_512


def test_table_names_every_column_and_the_verdict(capsys):
    assert nemo_craft(["plan", "+recipe=llama3p1_70b_4nodes"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("pp "))
    for col in (
        "params/GPU",
        "weights",
        "grads",
        "optim",
        "act/mb",
        "act/mb fullrc",
        "logits+loss",
        "experience",
        "kv-cache",
        "peak",
    ):
        assert col in header
    assert "TP=8 PP=2 VPP=1 CP=1 DP=2" in out and "fits: peak" in out
    # the whole model at TP=8: the Hugging Face count plus the vocabulary padding rows (x2: untied)
    assert f"{hf_parameter_count_llama() + 2 * (129024 - 128256) * 8192:,} parameters" in out


def hf_parameter_count_llama() -> int:
    from omegaconf import OmegaConf

    from nemo_craft.core.paths import CONF_DIR
    from nemo_craft.core.typed import to_dataclass
    from nemo_craft.models.config import ModelConfig

    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "llama3p1_70b.yaml"), resolve=True)
    return hf_parameter_count(to_dataclass(ModelConfig, values, "model"))


def test_options_and_overrides_in_any_order():
    from nemo_craft.cli.plan import _parse

    args = _parse(["model=qwen3_8b", "--json", "+recipe=qwen3_8b_1node", "plan.seq_length=4096"])
    assert args.json and args.overrides == ["model=qwen3_8b", "+recipe=qwen3_8b_1node", "plan.seq_length=4096"]
