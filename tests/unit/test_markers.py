"""tests/conftest.py: every test directory has its marker, registered in setup.cfg, and a test
gets the marker of its directory (docs/testing.md)."""

import configparser
from pathlib import Path

import pytest

from tests.conftest import MARKER_OF_DIRECTORY, marker_of

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
