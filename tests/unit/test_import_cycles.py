"""No import cycle inside ``shared/spotleash``: the tree reads top-down (basics, wire, decide, adapters,
services, parts). An import inside a function counts like one at the top (it only hides the cycle);
imports under ``if TYPE_CHECKING:`` are exempt (annotations only, never run)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "shared" / "spotleash"


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        found[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    return {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The spotleash modules ``name`` imports, anywhere in it but under ``if TYPE_CHECKING:``.
    ``from pkg import mod`` is an import of ``pkg.mod``; ``from pkg import Name`` one of ``pkg``."""
    tree = ast.parse(path.read_text(), str(path))
    exempt = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in exempt or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """Read in a fresh interpreter (this file run as a script): Python 3.11.2's ``ast.parse`` keeps its recursion
    depth in state shared by threads, so a thread an earlier test left running made one parse here fail with
    ``SystemError: AST constructor recursion depth mismatch`` (CI, once). A child has no such thread."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=120, check=True).stdout
    return {name: set(targets) for name, targets in json.loads(out).items()}


def _graph_here() -> dict[str, list[str]]:
    known = modules()
    return {name: sorted(imports_of(name, path, known)) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles (a deferred import is one too; break it, do not hide it):\n" + "\n".join(
        " <-> ".join(group) for group in found)


def test_the_check_sees_a_cycle_even_through_a_deferred_import() -> None:
    graph = import_graph()
    assert "spotleash.wire.events" in graph["spotleash.model"]  # the graph is the real one
    graph["spotleash.wire.events"] = graph["spotleash.wire.events"] | {"spotleash.model"}
    assert cycles(graph) == [["spotleash.model", "spotleash.wire.events"]]


def test_deferred_imports_count_and_type_checking_ones_do_not(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from spotleash import model\n"
                    "def f():\n    from spotleash.wire import events\n")
    known = {"spotleash.m": path, "spotleash.model": path, "spotleash.wire": path, "spotleash.wire.events": path}
    assert imports_of("spotleash.m", path, known) == {"spotleash.wire.events"}


if __name__ == "__main__":
    print(json.dumps(_graph_here()))
