"""The package layout follows the pipeline (issue 19 item 7), checked on the import graph.

Every import counts: module level, inside functions, and under `TYPE_CHECKING`
(a cycle hidden behind a type-checking guard is still a cycle to whoever reads
the code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import stacktrace_lab

PACKAGE_DIR = Path(stacktrace_lab.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["stacktrace_lab", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every stacktrace_lab module `path` imports, as absolute names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` imports the module x when x is one.
            found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("stacktrace_lab")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_the_trace_package_imports_nothing_from_the_recorder() -> None:
    offenders = {
        (name, target)
        for name, targets in _graph().items()
        if name.startswith("stacktrace_lab.trace")
        for target in targets
        if target.startswith("stacktrace_lab.record")
    }
    assert not offenders, f"trace/ imports the recorder: {sorted(offenders)}"


def _cycles(graph: dict[str, set[str]], within: str) -> list[list[str]]:
    """Strongly connected components of more than one module under `within` (Tarjan)."""
    nodes = [n for n in graph if n.startswith(within)]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if not w.startswith(within):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for n in nodes:
        if n not in index:
            visit(n)
    return found


def test_no_import_cycle_anywhere() -> None:
    """No two modules import each other, directly or around a loop (the analysis
    package's events <-> transfers was the last). A module importing its own
    package's __init__ (which re-exports the package) is not a loop of modules."""
    graph = {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in _graph().items()
    }
    assert _cycles(graph, "stacktrace_lab.") == []


def test_the_recorder_is_laid_out_as_its_pipeline() -> None:
    """The two front ends, the machine and the recording core are packages of their
    own, and the front ends do not import each other."""
    record = PACKAGE_DIR / "record"
    for package in ("asm", "linux", "machine", "core"):
        assert (record / package / "__init__.py").is_file(), package
    graph = _graph()
    asm, linux = "stacktrace_lab.record.asm", "stacktrace_lab.record.linux"
    crossing = {
        (name, target)
        for name, targets in graph.items()
        for target in targets
        if (name.startswith(asm) and target.startswith(linux))
        or (name.startswith(linux) and target.startswith(asm))
    }
    assert not crossing, f"the front ends import each other: {sorted(crossing)}"


def test_the_graph_sees_real_imports() -> None:
    """The checks above would pass vacuously on an empty graph."""
    graph = _graph()
    assert "stacktrace_lab.trace.format" in graph["stacktrace_lab.trace.reader"]
    invariants = graph["stacktrace_lab.analysis.invariants"]
    assert any(t.startswith("stacktrace_lab.analysis.") for t in invariants)
