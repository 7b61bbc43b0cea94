"""A user's mistake at the command line is one line naming the fix, exit code 2, no traceback:
a missing optional engine names the extra to install, a missing data directory names the variable.
The engines are hidden from the import system here (``sys.modules[name] = None``), as on a machine
without them."""

import ast
import sys
from pathlib import Path

import pytest

from nemo_craft.cli import envs as envs_cli
from nemo_craft.cli import evaluate as evaluate_cli
from nemo_craft.cli import train as train_cli

ENGINE = {"alfworld": "alfworld", "scienceworld": "scienceworld"}
PACKAGE = Path(__file__).resolve().parents[3] / "nemo_craft"


@pytest.fixture
def launcher_env(monkeypatch):
    """A one-rank launcher's variables, restored afterwards (train and evaluate would set them)."""
    for key, value in dict(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29555"
    ).items():
        monkeypatch.setenv(key, value)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("env", sorted(ENGINE))
def test_envs_check_without_the_engine_names_the_extra(env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, ENGINE[env], None)
    assert envs_cli.main(["check", env, "--seeds", "1"]) == 2
    line = _one_line(capsys)
    assert f"needs {ENGINE[env]}" in line and "pip install 'nemo_craft[envs]'" in line


@pytest.mark.parametrize("env", sorted(ENGINE))
def test_train_without_the_engine_names_the_extra(env, monkeypatch, capsys, launcher_env):
    monkeypatch.setitem(sys.modules, ENGINE[env], None)
    assert train_cli.main([f"env={env}"]) == 2
    assert "pip install 'nemo_craft[envs]'" in _one_line(capsys)


@pytest.mark.parametrize("env", sorted(ENGINE))
def test_evaluate_without_the_engine_names_the_extra(env, monkeypatch, capsys, launcher_env):
    monkeypatch.setitem(sys.modules, ENGINE[env], None)
    assert evaluate_cli.main([f"env={env}", "--tasks", "1"]) == 2
    assert "pip install 'nemo_craft[envs]'" in _one_line(capsys)


def test_train_with_official_alfworld_games_and_no_data_directory_names_the_variable(monkeypatch, capsys, launcher_env):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    assert train_cli.main(["env=alfworld", "env.config.data=official"]) == 2
    line = _one_line(capsys)
    assert "ALFWORLD_DATA is not set" in line and "env.config.data=generated" in line


def test_evaluate_on_an_empty_data_directory_names_it(monkeypatch, capsys, launcher_env, tmp_path):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    assert evaluate_cli.main(["env=alfworld", "env.config.data=official", "--tasks", "1"]) == 2
    assert f"ALFWORLD_DATA={tmp_path} has no games under json_2.1.1/train" in _one_line(capsys)


def test_a_bad_evaluate_value_is_one_line(capsys, launcher_env):
    assert evaluate_cli.main(["--tasks", "0"]) == 2
    assert "--tasks 0: evaluate at least one task" in _one_line(capsys)


def test_the_package_does_not_import_the_test_harness():
    """nemo_craft.testing is for tests: nothing else in the package (the CLI above all) imports it."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.relative_to(PACKAGE)}:{node.lineno}" for n in names if n.startswith("nemo_craft.testing")
            ]
    assert not offenders
