"""No import circles among gpner's modules, lazy (function-level) imports included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(root: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package's ``__init__``) for every module under ``root``."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, package)
    return mods


def _owner(name: str, mods: dict) -> str | None:
    """The module ``name`` lives in: itself, or the nearest enclosing module or package."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, package: bool, node: ast.Import | ast.ImportFrom, mods) -> set[str]:
    """The gpner modules one import statement executes, beyond the packages above them."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        # ``from a import b`` imports the module a.b when there is one, else takes b from a.
        names = [
            f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in mods else origin
            for alias in node.names
        ]
    return {owner for name in names if (owner := _owner(name, mods)) and owner != module}


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere in its source (top level or in a function)."""
    mods = _modules(root)
    graph = {}
    for module, (path, package) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(module, package, node, mods)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "gpner.data.readers" in graph and "gpner.cli" in graph  # the walk found the sources
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("X = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None
