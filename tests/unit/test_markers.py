"""tests/conftest.py: every test directory has its marker, registered in setup.cfg, and a test
gets the marker of its directory and those its file has in MARKERS_OF_FILE (docs/testing.md)."""

import ast
import configparser
from pathlib import Path

import pytest

from tests.conftest import MARKER_OF_DIRECTORY, MARKERS_OF_FILE, file_markers_of, marker_of

TESTS = Path(__file__).resolve().parents[1]


def _registered() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(TESTS.parent / "setup.cfg")
    return {line.split(":")[0].strip() for line in cfg["tool:pytest"]["markers"].strip().splitlines()}


def test_every_test_directory_has_a_registered_marker():
    dirs = {p.name for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert dirs == set(MARKER_OF_DIRECTORY)
    assert set(MARKER_OF_DIRECTORY.values()) | {"slow"} <= _registered()


def test_a_test_gets_the_marker_of_its_top_directory():
    assert marker_of(Path(__file__)) == "unit"
    assert marker_of(TESTS / "distributed" / "test_layouts.py") == "distributed"
    assert marker_of(TESTS / "e2e" / "sub" / "test_x.py") == "e2e"
    assert marker_of(TESTS.parent / "scripts" / "x.py") is None


def test_a_directory_without_a_marker_is_refused_with_the_fix():
    with pytest.raises(pytest.UsageError, match=r"tests/smoke/ has no marker: add it to MARKER_OF_DIRECTORY"):
        marker_of(TESTS / "smoke" / "test_x.py")


def test_this_test_carries_the_unit_marker(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("e2e") is None


def test_a_missing_engine_skips_unless_it_was_promised(monkeypatch):
    """need_engine / need_java: a skip that names the extra, a failure under NEMO_CRAFT_EXPECT_ENVS=1."""
    from tests.conftest import need_engine, need_java

    monkeypatch.delenv("NEMO_CRAFT_EXPECT_ENVS", raising=False)
    assert need_engine("json").__name__ == "json"  # an importable module comes back
    with pytest.raises(pytest.skip.Exception, match=r"nemo_craft_no_such_engine is not installed .*\.\[envs\]"):
        need_engine("nemo_craft_no_such_engine")
    monkeypatch.setenv("NEMO_CRAFT_EXPECT_ENVS", "1")
    with pytest.raises(pytest.fail.Exception, match="NEMO_CRAFT_EXPECT_ENVS=1 but nemo_craft_no_such_engine"):
        need_engine("nemo_craft_no_such_engine")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match="ScienceWorld needs Java"):
        need_java()


def _test_names(path: Path) -> set[str]:
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


def test_every_file_marker_is_registered_and_names_an_existing_test():
    # a renamed file or test would silently leave CI's selection (-m stack) without it
    assert set(MARKERS_OF_FILE.values()) <= _registered()
    for key in MARKERS_OF_FILE:
        where, _, name = key.partition("::")
        path = TESTS / where
        assert path.is_dir() if where.endswith("/") else path.is_file(), f"MARKERS_OF_FILE: no tests/{where}"
        assert not name or name in _test_names(path), f"MARKERS_OF_FILE: no test {name} in tests/{where}"


def test_a_file_marker_reaches_its_file_its_folder_and_its_one_test_only():
    assert file_markers_of(TESTS / "unit" / "test_lint.py", "test_ruff_lint") == {"repo"}
    assert file_markers_of(TESTS / "unit" / "rollout" / "test_sampling.py", "test_x") == {"stack"}
    train = TESTS / "e2e" / "test_train.py"
    assert file_markers_of(train, "test_resume_continues_bit_for_bit") == {"stack"}
    assert file_markers_of(train, "test_two_steps_at_tp2_pp2") == set()
    assert file_markers_of(TESTS.parent / "scripts" / "x.py", "test_x") == set()


def test_this_test_carries_the_repo_marker(request):
    assert request.node.get_closest_marker("repo") is not None
    assert request.node.get_closest_marker("stack") is None
