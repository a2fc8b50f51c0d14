"""The package's layers (issue 8, item 9): the engine imports nothing above it, and no
modules import each other in a circle, counting the imports inside functions (which run
as surely as the others) and leaving out those only for type checkers."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sm_hlm"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Runtime imports between the package's modules (TYPE_CHECKING blocks left out)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        pkg = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg[:len(pkg) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("sm_hlm"):
                    full = node.module
                else:
                    continue
                for a in node.names:
                    target = f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full
                    if target in mods and target != m:
                        edges[m].add(target)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.name != m:
                        edges[m].add(a.name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    return mods, _imports(mods)


def test_the_engine_imports_nothing_above_it(graph):
    mods, edges = graph
    allowed = {"sm_hlm._compat"}
    for m in mods:
        if m.startswith("sm_hlm.engine"):
            above = sorted(t for t in edges[m]
                           if not t.startswith("sm_hlm.engine") and t not in allowed)
            assert not above, f"{m} imports {above}"


def test_no_import_cycles(graph):
    _, edges = graph
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
