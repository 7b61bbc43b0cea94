import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from nemo_craft.cli.envs import main
from nemo_craft.envs import (
    ENVIRONMENTS,
    EvalSplit,
    PaperMetric,
    PoolConfig,
    env_class,
    make_config,
    make_env,
    register_env,
)
from nemo_craft.envs.sokoban import SokobanEnv
from nemo_craft.eval.metrics import paper_metrics, summarize
from nemo_craft.eval.splits import split_spec
from nemo_craft.testing.examples import parrot_env

REPO = Path(__file__).resolve().parents[3]
CONF = REPO / "conf" / "env"


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


# -- the environment extension point (docs/extending.md#environment) --------------------------------


def example_shown_in(doc: Path, path: str) -> str:
    """The code block that ``doc`` shows under ``<!-- example: path -->``."""
    m = re.search(rf"<!-- example: {re.escape(path)} -->\n```python\n(.*?)```\n", doc.read_text(), re.DOTALL)
    assert m, f"{doc.name} shows no example {path}"
    return m.group(1)


@pytest.fixture
def registry():
    """The registry as it is, restored after the test (registrations are process-wide)."""
    saved = dict(ENVIRONMENTS)
    yield ENVIRONMENTS
    ENVIRONMENTS.clear()
    ENVIRONMENTS.update(saved)


def test_the_page_shows_the_example_environment_verbatim():
    path = "nemo_craft/testing/examples/parrot_env.py"
    assert example_shown_in(REPO / "docs" / "extending.md", path) == (REPO / path).read_text()


def test_a_registered_environment_brings_its_splits_metrics_and_stop_strings(registry):
    with pytest.raises(ValueError, match="not registered"):
        split_spec("parrot", "test")
    parrot_env.register()
    assert env_class("parrot").stop_strings == ("</say>",)  # the rollout's default stop strings
    test = split_spec("parrot", "test")
    assert test.env_split == "test" and test.seeds(2, val_seed_offset=1000) == [0, 1]
    val = split_spec("parrot", "val")  # not declared: the trainer's validation
    assert val.env_split is None and val.seeds(2, val_seed_offset=1000) == [1000, 1001]
    episodes = [
        {"success": s, "score": float(s), "reward": float(s), "num_turns": 1, "n_invalid": 0} for s in (1, 0, 1, 1)
    ]
    assert summarize(episodes, "parrot")["paper"] == {"Parrot success": 75.0}
    env = make_env("parrot", split=test.env_split)
    env.reset(test.seeds(1, val_seed_offset=0)[0])
    assert env.observation == "Say: amber"
    _, reward, done, info = env.step(env.expert_actions()[0])
    assert (reward, done, info["success"], info["score"]) == (1.0, True, True, 1.0)


class Untested(parrot_env.ParrotEnv):
    eval_splits = {}
    paper_metrics = ()


def test_what_an_environment_leaves_out(registry):
    register_env("untested", f"{__name__}:Untested")
    with pytest.raises(ValueError, match="'untested' declares no 'test' evaluation split: set eval_splits"):
        split_spec("untested", "test")
    assert [m.label for m in paper_metrics("untested")] == ["untested success"]
    with pytest.raises(ValueError, match="'sokoban' is already registered as 'nemo_craft.envs.sokoban.env:SokobanEnv'"):
        register_env("sokoban", f"{__name__}:Untested")
    with pytest.raises(ValueError, match="'package.module:Class', got 'Untested'"):
        register_env("untested2", "Untested")
    with pytest.raises(ValueError, match="first_seed must be an int, None or 'held_out', got 'later'"):
        EvalSplit(first_seed="later")
    with pytest.raises(ValueError, match="field must be 'success_rate' or 'score_mean', got 'reward_mean'"):
        PaperMetric("reward_mean", "reward")


def test_envs_check_uses_the_runs_env_settings(capsys):
    """The tiny model's demo trains Sokoban at 6 turns: that is what `envs check` checks, and an
    LLM's run (--run model=...) at the dataclass's 20; ALFWorld says which games it uses."""
    assert main(["check", "sokoban", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "max_turns=6, template=compact" in out and "limit=  6" in out, out
    assert main(["check", "sokoban", "--seeds", "1", "--run", "model=smollm2_135m"]) == 0
    assert "limit= 20" in capsys.readouterr().out


def test_envs_limits_alfworld_names_its_games(capsys, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    from nemo_craft.cli.envs import describe

    assert "ALFWorld-generated" in describe("alfworld", {"data": "auto", "max_turns": 50})
