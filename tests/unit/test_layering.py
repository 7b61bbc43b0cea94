"""docs/design.md#layering, held: every part of nemo_craft imports only the parts its row of the
table allows (at module level and inside functions; ``if TYPE_CHECKING:`` imports are annotations,
not dependencies), the parts form no cycle, and an import of the package's own modules inside a
function outside ``cli/`` says why in a ``# lazy:`` comment."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "nemo_craft"


def layering_table(text: str) -> dict[str, set[str]]:
    """part -> the parts it may import, from the markdown table under '### Layering'."""
    section = text.split("### Layering", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        rows[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[1]))
    return rows


def _part(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def _own_imports(tree: ast.AST):
    """(imported part, line number, inside a function) of every nemo_craft import of ``tree``,
    skipping ``if TYPE_CHECKING:`` blocks."""
    out = []

    def visit(node, in_function):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "nemo_craft" else [f"nemo_craft.{a.name}" for a in node.names]
        out.extend(
            (n.split(".")[1], (node.lineno, node.end_lineno), in_function) for n in names if n.startswith("nemo_craft.")
        )
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return out


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """(part -> parts it imports, ``file:line`` of own imports inside functions without a reason)."""
    graph: dict[str, set[str]] = {}
    unexplained = []
    for path in sorted(package.rglob("*.py")):
        part = _part(path, package)
        lines = path.read_text().splitlines()
        for target, (first, last), in_function in _own_imports(ast.parse(path.read_text())):
            if target != part:
                graph.setdefault(part, set()).add(target)
            if in_function and part != "cli" and not any("# lazy:" in line for line in lines[first - 1 : last]):
                unexplained.append(f"{path.relative_to(package.parent)}:{first}")
    return graph, unexplained


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            strong(v)
    return out


TABLE = layering_table((ROOT / "docs" / "design.md").read_text())
GRAPH, UNEXPLAINED = import_graph()
PARTS = sorted({_part(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"})


def test_every_part_has_a_row_and_every_row_a_part():
    assert sorted(TABLE) == PARTS


@pytest.mark.parametrize("part", PARTS)
def test_part_imports_only_what_its_row_allows(part):
    assert GRAPH.get(part, set()) - TABLE[part] == set()


def test_no_cycle_between_parts():
    assert cycles(GRAPH) == []


def test_lazy_own_imports_say_why():
    assert UNEXPLAINED == []


def test_the_checks_fire_on_a_bad_package(tmp_path):
    """Negative control: a part importing one above it, a cycle and an unexplained lazy import
    are all caught by the same functions."""
    pkg = tmp_path / "nemo_craft"
    for part, body in {
        "core/a.py": "from nemo_craft.trainer.b import x\n",
        "trainer/b.py": "from nemo_craft.core.a import y\n\ndef f():\n    from nemo_craft.core import a\n",
    }.items():
        (pkg / part).parent.mkdir(parents=True, exist_ok=True)
        (pkg / part).write_text(body)
    graph, unexplained = import_graph(pkg)
    assert graph == {"core": {"trainer"}, "trainer": {"core"}}
    assert cycles(graph) == [["core", "trainer"]]
    assert unexplained == ["nemo_craft/trainer/b.py:4"]
    assert graph["core"] - TABLE["core"] == {"trainer"}
