"""The product's import graph, read from the source (ast, nothing imported): serve/, kernels/ and training/ never
import benchmarks/ (a wheel does not ship it), and no module imports in a circle — counting every import: at module
level, under `if TYPE_CHECKING:` and inside functions (a lazy import still ties the two modules together)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("serve", "kernels", "training")


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PRODUCT:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `path` imports (a `from a import b` gives `a` and `a.b`), relative imports resolved and
    the installed namespace prefix (`aligngate.serve...`) dropped, so the names match `module_files()`."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)  # importlib.import_module("...") with a literal name
    return {n.removeprefix("aligngate.") for n in names}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: {n for n in imported_names(f, m) if n in files and n != m} for m, f in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_graph_is_read():
    # the reader itself: it finds the product's modules and real edges (a broken walk would pass everything below)
    graph = import_graph()
    assert {"serve.api.app", "serve.monitor.monitor", "kernels.fused_torch", "training.cli"} <= set(graph)
    assert "serve.gateway" in graph["serve.api.app"] and "serve.monitor.monitor_windows" in graph["serve.monitor.monitor_metrics"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("pkg", PRODUCT)
def test_the_product_does_not_import_benchmarks(pkg):
    files = module_files()
    bad = {m: sorted(n for n in imported_names(f, m) if n == "benchmarks" or n.startswith("benchmarks."))
           for m, f in files.items() if m.split(".")[0] == pkg}
    assert not {m: n for m, n in bad.items() if n}, "the product imports benchmarks/ (not installed with it)"


def test_no_module_imports_in_a_circle():
    assert cycles(import_graph()) == []


def test_demo_and_bench_say_so_without_a_source_checkout(monkeypatch, capsys):
    """A wheel install has no benchmarks/: `aligngate demo`/`bench` exit 2 and say what to do, never a traceback."""
    from serve import cli

    monkeypatch.setattr(cli, "source_checkout", lambda: None)
    for argv in (["demo", "incident", "--smoke"], ["bench", "overhead"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "source checkout" in err and "benchmarks/" in err and "clone the repository" in err


def test_demo_runs_the_checkouts_module_as_its_own_process(capfd):
    from serve import cli

    assert cli.source_checkout() == ROOT
    assert cli.main(["demo", "incident", "--help"]) == 0
    assert "usage: aligngate demo incident" in capfd.readouterr().out


def test_every_product_module_imports():
    """Every module of serve/, kernels/ and training/ imports (a moved module or a wrong `from x import y` fails
    here, not first in a gateway process)."""
    import importlib

    failed = {}
    for name in module_files():
        if name.endswith("__main__"):  # runs its command when imported
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 — collect them all
            failed[name] = repr(e)
    assert not failed, failed
