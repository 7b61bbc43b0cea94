"""``nemo-craft train --cfg job``: the composed config with every default, validated, then exit."""

import pytest
import yaml

from nemo_craft.cli.train import main
from nemo_craft.losses.config import LossConfig
from nemo_craft.parallel.config import OptimConfig


def test_cfg_job_prints_every_default_and_the_overrides(capsys):
    assert main(["--cfg", "job", "method=sdar", "trainer.max_steps=7"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_steps"] == 7
    assert cfg["loss"]["name"] == "sdar"
    # fields that no YAML sets are there with their dataclass defaults
    assert cfg["loss"]["clip_eps"] == LossConfig.clip_eps
    assert cfg["trainer"]["optim"]["adam_beta2"] == OptimConfig.adam_beta2
    assert cfg["env"]["config"]["max_turns"] >= 1 and "pool" in cfg["env"]


def test_cfg_without_job_and_a_bad_value_is_one_line(capsys):
    assert main(["--cfg", "seed=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 3
    assert main(["--cfg", "job", "rollout.generation.temperature=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nemo-craft train: ") and err.count("\n") == 1 and "temperature" in err
    assert main(["--cfg", "job", "trainer.lrr=1"]) == 2
    assert "trainer.lrr" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("trainer.lr", "trainer.optim.lr"),
        ("trainer.clip_grad", "trainer.optim.clip_grad"),
        ("rollout.max_tokens_per_turn", "rollout.generation.max_new_tokens"),
        ("rollout.temperature", "rollout.generation.temperature"),
        ("rollout.val_top_p", "rollout.validation.top_p"),
    ],
)
def test_a_moved_key_is_refused_in_one_line_naming_the_new_one(old, new, monkeypatch, capsys):
    """A command line written before the keys moved fails before anything runs, telling the new key."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)  # main() would set the one-rank launcher's variables
    assert main([f"{old}=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nemo-craft train: ") and err.count("\n") == 1, err
    assert f"'{old}'" in err and f"{new}=0.5" in err
