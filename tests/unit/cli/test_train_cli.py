"""``nemo-craft train --cfg job``: the composed config with every default, validated, then exit."""

import yaml

from nemo_craft.cli.train import main
from nemo_craft.losses.config import LossConfig
from nemo_craft.trainer.trainer import TrainerConfig


def test_cfg_job_prints_every_default_and_the_overrides(capsys):
    assert main(["--cfg", "job", "method=sdar", "trainer.max_steps=7"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_steps"] == 7
    assert cfg["loss"]["name"] == "sdar"
    # fields that no YAML sets are there with their dataclass defaults
    assert cfg["loss"]["clip_eps"] == LossConfig.clip_eps
    assert cfg["trainer"]["adam_beta2"] == TrainerConfig.adam_beta2
    assert cfg["env"]["config"]["max_turns"] >= 1 and "pool" in cfg["env"]


def test_cfg_without_job_and_a_bad_value_is_one_line(capsys):
    assert main(["--cfg", "seed=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 3
    assert main(["--cfg", "job", "rollout.temperature=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nemo-craft train: ") and err.count("\n") == 1 and "temperature" in err
    assert main(["--cfg", "job", "trainer.lrr=1"]) == 2
    assert "trainer.lrr" in capsys.readouterr().err
