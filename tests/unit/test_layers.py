"""The harness's layers import downwards only, and no module imports itself round a cycle.

From the bottom: results (schemas, readers, the run store, atomic writes) → config → launch and
analysis (side by side, neither imports the other) → measure and report (the same) → modes →
cli. A package may import its own modules and any package below it; `infbench.paths` (where the
checkout is) is below everything. The servers under test and the harness never import each
other. Every import counts, also one inside a function: a lazy import that breaks a cycle at
run time is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from infbench.paths import ROOT

pytestmark = pytest.mark.unit

RANK = {"paths": 0, "results": 1, "config": 2, "launch": 3, "analysis": 3, "measure": 4,
        "report": 4, "modes": 5, "cli": 6, "__main__": 7, "__init__": 7}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(top: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / top).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The modules of ours a file imports (`from a import b` names module a.b when it is one)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m.split(".")[0] in ("infbench", "servers")}


def graph() -> dict[str, set[str]]:
    mods = {**modules("infbench"), **modules("servers")}
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in g.items():
        for dst in sorted(targets):
            top_src, top_dst = src.split(".")[0], dst.split(".")[0]
            if top_src != top_dst:
                bad.append(f"{src} imports {dst}: the harness and the servers never import "
                           "each other")
            elif top_src == "infbench" and dst != "infbench":
                a, b = layer(src), layer(dst)
                if a != b and RANK.get(b, 99) >= RANK.get(a, -1):
                    bad.append(f"{src} ({a}) imports {dst} ({b})")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_import_points_down() -> None:
    assert upward(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_every_harness_package_has_a_rank() -> None:
    assert {layer(m) for m in modules("infbench")} <= set(RANK)


def test_the_checks_catch_what_they_are_for() -> None:
    g = {"infbench.results.readers": {"infbench.modes.sweep"}, "infbench.modes.sweep": set(),
         "infbench.analysis.a": {"infbench.launch.b"}, "infbench.launch.b": set(),
         "infbench.report.x": {"infbench.report.y"}, "infbench.report.y": {"infbench.report.x"},
         "servers.app": {"infbench.config"}, "infbench.config": set()}
    assert len(upward(g)) == 3
    assert cycles(g) == [["infbench.report.x", "infbench.report.y"]]


def test_test_modules_have_unique_names() -> None:
    """The test folders are not packages: pytest imports each file by its name, and two files
    of one name in two folders stop the collection ("import file mismatch")."""
    seen: dict[str, list[str]] = {}
    for f in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(f.name, []).append(str(f.relative_to(ROOT)))
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}
