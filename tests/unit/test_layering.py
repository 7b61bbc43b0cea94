"""docs/design.md#layering: ``parallel`` imports nothing else of nemo_craft and ``losses`` only
``parallel`` (the loss runs in one process on plain tensors; the collectives wrap the same maths)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nemo_craft"
ALLOWED = {"parallel": {"parallel"}, "losses": {"losses", "parallel"}}


def _nemo_craft_imports(path: Path) -> set[str]:
    """The nemo_craft packages (first name below nemo_craft) that ``path`` imports, lazily or not."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        out |= {n.split(".")[1] for n in names if n.startswith("nemo_craft.")}
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_nothing_above_it(package):
    bad = {
        f"{p.relative_to(PACKAGE)}": sorted(_nemo_craft_imports(p) - ALLOWED[package])
        for p in (PACKAGE / package).rglob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}
