"""Package layering and bench's rooms.

Data flows neu -> exports -> bench, never back. Inside bench the rooms are layered too:
shared modules at the top of the package (config, registry, amp, cpu, device, metrics, ui),
then train/, measure/, report/ (views of results.json), release/ (the steps that write a
run's deliverables, using report's renderers), cli/ (the commands), and __main__ (parse and
dispatch). A module imports only its own room or lower ones, and no set of modules imports
itself around a circle anywhere (lazy imports inside functions included). The Python that
scripts/*.sh embed imports only names that exist."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYER = {"neu": 0, "exports": 1, "bench": 2}
ROOMS = ["shared", "train", "measure", "report", "release", "cli", "__main__"]


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


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a package's own __init__ excluded: importing
    bench.measure.step runs bench/measure/__init__.py, which is not an edge back)."""
    mods = modules()
    return {
        m: {i for i in imports_of(p) if i in mods and i != m and not m.startswith(i + ".")}
        for m, p in mods.items()
    }


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ROOMS:
        return parts[1]
    return "shared"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_back_edges_between_packages():
    back = [
        f"{mod} imports {imp}"
        for mod, path in modules().items()
        for imp in imports_of(path)
        if LAYER[imp.split(".")[0]] > LAYER[mod.split(".")[0]]
    ]
    assert back == []


def test_bench_rooms_import_only_their_own_or_lower_rooms():
    rank = {r: i for i, r in enumerate(ROOMS)}
    up = sorted(
        f"{m} ({room(m)}) imports {i} ({room(i)})"
        for m, deps in graph().items()
        if m.startswith("bench")
        for i in deps
        if i.startswith("bench") and rank[room(i)] > rank[room(m)]
    )
    assert up == [], "a lower room imports a higher one:\n" + "\n".join(up)


def test_every_bench_module_is_in_a_room():
    """A new top-level module is a shared one: it must not import a room (else it belongs in
    that room)."""
    rooms = {r for r in ROOMS if r not in ("shared", "__main__")}
    g = graph()
    strays = sorted(
        m
        for m in g
        if m.startswith("bench.") and m.count(".") == 1 and m.split(".")[1] not in rooms
        and m != "bench.__main__" and any(room(i) != "shared" for i in g[m])
    )  # fmt: skip
    assert strays == []


def test_no_import_cycles_anywhere():
    found = cycles(graph())
    assert found == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


MAX_FUNCTION_LINES = 60


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for mod, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{mod}.{node.name}: {n} lines")
    return sorted(out)


def test_no_function_is_longer_than_a_screen():
    """The pipeline reads top to bottom in small named steps (torchvision's train_one_epoch and
    evaluate are about 40 lines each)."""
    long = long_functions()
    assert long == [], f"over {MAX_FUNCTION_LINES} lines: split by meaning\n" + "\n".join(long)


def test_the_length_check_sees_long_functions():
    assert long_functions(limit=40)  # the limit is real: several functions exceed 40 lines


def project_imports_in_scripts() -> list[tuple[str, str, str]]:
    """(script, module, name) of every `from bench|exports|neu... import name` line in the
    Python that scripts/*.sh run: nothing else runs those lines before a long proof does."""
    found = []
    for script in sorted((REPO / "scripts").glob("*.sh")):
        for line in script.read_text().splitlines():
            m = re.match(r"\s*from ((?:bench|exports|neu)[\w.]*) import (.+)$", line)
            if m:
                names = m.group(2).split(",")
                found += [(script.name, m.group(1), n.split(" as ")[0].strip()) for n in names]
    return found


def test_the_scripts_import_what_exists():
    found = project_imports_in_scripts()
    assert ("amx_proof.sh", "bench.report.markdown", "sweep_note") in found
    missing = [f"{s}: from {m} import {n}" for s, m, n in found
               if not hasattr(importlib.import_module(m), n)]  # fmt: skip
    assert not missing, missing
