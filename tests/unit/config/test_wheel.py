"""A wheel that works (docs/design.md#configuration): the package built as a wheel, installed
into a fresh directory and run from another one, finds its configs and plans a recipe.

The wheel is built without its dependencies and without build isolation (the job's venv already
has torch, megatron-core and setuptools: nothing is downloaded); the editable install is hidden
behind PYTHONPATH, and the test checks that the import came from the installed copy."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _run(cmd, cwd, env, timeout=300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # a copy of what the wheel is built from: setuptools' build/ there, never a stale one of the checkout
    source = tmp / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("nemo_craft", "conf"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)],
        cwd=tmp,
        env=os.environ.copy(),
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp.glob("nemo_craft-*.whl"))
    target = tmp / "site"
    done = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        cwd=tmp,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return wheel, target, env, elsewhere


def test_the_wheel_ships_every_yaml_of_conf(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"nemo_craft/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)


def test_the_wheel_leaves_out_the_test_only_code(installed):
    names = zipfile.ZipFile(installed[0]).namelist()
    assert any(n.startswith("nemo_craft/cli/") for n in names)  # the listing is the package's
    assert not [n for n in names if n.startswith("nemo_craft/testing/")]


def test_the_package_does_not_import_its_test_only_code():
    """nemo_craft/testing is left out of the wheel: nothing else in the package may import it."""
    importers = []
    for path in (REPO / "nemo_craft").rglob("*.py"):
        if "testing" in path.relative_to(REPO / "nemo_craft").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "nemo_craft.testing" or n.startswith("nemo_craft.testing.") for n in names):
                importers.append(str(path.relative_to(REPO)))
    assert not importers, f"these import nemo_craft.testing, which the wheel leaves out: {sorted(set(importers))}"


def test_the_installed_package_plans_a_recipe_from_another_directory(installed):
    _, target, env, elsewhere = installed
    where = _run(
        [
            sys.executable,
            "-c",
            "import nemo_craft, nemo_craft.config as c; print(nemo_craft.__file__); print(c.CONF_DIR.is_symlink())",
        ],
        cwd=elsewhere,
        env=env,
    )
    assert where.stdout.splitlines()[0].startswith(str(target)), where.stdout + where.stderr
    assert where.stdout.splitlines()[1] == "False"  # real files, not the checkout's link
    plan = _run(
        [sys.executable, "-m", "nemo_craft", "plan", "+recipe=qwen3_8b_2nodes", "--no-suggest"], cwd=elsewhere, env=env
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "layout TP=2 PP=1 VPP=1 CP=1 DP=8" in plan.stdout, plan.stdout[-2000:]  # the recipe's, from the wheel's conf


def test_the_installed_console_script_answers_train_help(installed):
    _, target, env, elsewhere = installed
    script = target / "bin" / "nemo-craft"
    done = _run([sys.executable, str(script), "train", "--help"], cwd=elsewhere, env=env)
    assert done.returncode == 0 and "nemo-craft train" in done.stdout, done.stdout + done.stderr
