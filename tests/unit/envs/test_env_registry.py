import dataclasses
from pathlib import Path

import pytest
import yaml

from nemo_craft.cli.envs import main
from nemo_craft.envs import ENVIRONMENTS, PoolConfig, env_class, make_config, make_env
from nemo_craft.envs.sokoban import SokobanEnv

CONF = Path(__file__).resolve().parents[3] / "conf" / "env"


def test_registry_names():
    assert set(ENVIRONMENTS) == {"sokoban", "search_qa", "webshop", "alfworld", "scienceworld"}
    with pytest.raises(ValueError, match="sokoban"):
        make_env("minecraft")


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="boxes"):
        make_env("sokoban", boxes=3)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_conf_files_match_the_config_dataclasses(path):
    conf = yaml.safe_load(path.read_text())
    assert conf["name"] == path.stem
    config = make_config(conf["name"], **conf.get("config", {}))
    fields = {f.name for f in dataclasses.fields(env_class(conf["name"]).config_cls)}
    assert set(conf.get("config", {})) <= fields, "the YAML sets only fields of the config class"
    assert config.max_turns >= 1
    PoolConfig(**conf.get("pool", {}))


def test_conf_covers_every_environment():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(ENVIRONMENTS)


def test_paper_turn_budgets_and_penalties():
    assert make_config("alfworld").max_turns == 50
    assert make_config("search_qa").max_turns == 4
    assert make_config("webshop").max_turns == 15
    assert make_config("search_qa").invalid_penalty == 0.01
    assert make_config("sokoban").invalid_penalty == 0.1


def test_envs_check_cli(capsys, monkeypatch):
    assert main(["check", "sokoban", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("success=True") == 3 and "seed=2" in out
    assert main(["check", "webshop", "--seeds", "2", "--set", "split=test"]) == 0
    monkeypatch.setattr(SokobanEnv, "expert_actions", lambda self: ["<action>up</action>"] * 2)
    assert main(["check", "sokoban", "--seeds", "4", "--set", "max_turns=2"]) == 1
    assert main(["check", "sokoban", "--set", "bogus=1"]) == 2


def test_envs_check_names_a_plan_longer_than_the_turn_limit(capsys, monkeypatch):
    monkeypatch.setattr(SokobanEnv, "expert_actions", lambda self: ["<action>up</action>"] * 5)
    assert main(["check", "sokoban", "--seeds", "2", "--set", "max_turns=4"]) == 1
    out = capsys.readouterr().out
    assert out.count("plan=  5 > turn limit 4: the expert plan cannot finish") == 2
    assert "sokoban: 2 expert plan(s) longer than the turn limit" in out


def test_envs_limits_cli(capsys):
    assert main(["limits", "webshop"]) == 0
    assert capsys.readouterr().out.split() == ["task", "turn_limit", "(all)", "15"]
    assert main(["limits", "scienceworld", "--set", "tasks=[find-plant, boil]"]) == 0
    header, boil, find_plant, total = (line.split() for line in capsys.readouterr().out.splitlines())
    assert header == ["task", "turn_limit", "longest_plan", "train", "dev", "test"]
    assert boil[0] == "boil" and int(boil[1]) >= int(boil[2]) > 100  # its limit covers its plans
    assert find_plant[:2] == ["find-plant", "100"] and find_plant[3:] == ["150/150", "75/75", "75/75"]
    assert total[:2] == ["(all", "tasks)"]
    assert main(["limits", "scienceworld", "--set", "turn_cap=50"]) == 2
