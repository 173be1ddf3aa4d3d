"""Package layering: data flows neu -> exports -> bench (or neu -> bench), never back, and no
module of bench imports one that imports it back (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYER = {"neu": 0, "exports": 1, "bench": 2}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] in LAYER}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYER:
        for p in (REPO / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def test_no_back_edges_between_packages():
    back = [
        f"{mod} imports {imp}"
        for mod, path in modules().items()
        for imp in imports_of(path)
        if LAYER[imp.split(".")[0]] > LAYER[mod.split(".")[0]]
    ]
    assert back == []


def test_no_import_cycles_between_bench_modules():
    mods = modules()
    graph = {
        m: {i for i in imports_of(p) if i in mods and i != m and not m.startswith(i + ".")}
        for m, p in mods.items()
        if m.startswith("bench.") and not m.endswith("__main__")
    }
    cycles = [f"{a} <-> {b}" for a, deps in graph.items() for b in deps if a in graph.get(b, ())]
    assert cycles == []
