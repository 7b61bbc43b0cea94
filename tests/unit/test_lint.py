"""The code passes ruff's lint and is in ruff's format (pyproject.toml [tool.ruff]); the fix is
``ruff check --fix . && ruff format .`` at the repository root (docs/testing.md)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it is in the test extra (bash scripts/install.sh test)")
    return subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_lint():
    out = _ruff("check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = _ruff("format", "--check", "--no-cache", ".")
    assert out.returncode == 0, "files not in ruff's format (run `ruff format .`):\n" + out.stdout + out.stderr
