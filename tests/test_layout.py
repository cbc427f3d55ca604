"""The package's shape: no import cycles among its modules (imports inside functions counted), no module importing
another of the package inside a function, and classes and functions a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "mdarts_rs"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules an import statement loads: ``from a.b import c`` loads ``a.b.c`` where that is a
    module, else ``a.b``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    base = node.module or ""
    out = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    if base in MODULES and len(out) < len(node.names):
        out.append(base)
    return out


def _imports(name: str) -> list[tuple[str, bool]]:
    """(module imported, inside a function) for every import of the package's modules in module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((t, in_function) for t in _targets(child) if t != name)
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            visit(child, nested)

    visit(tree, False)
    return found


def test_no_module_imports_another_inside_a_function():
    inside = [f"{name} -> {target}" for name in MODULES for target, f in _imports(name) if f]
    assert not inside, "imports of the package's own modules inside functions: " + ", ".join(inside)


def test_no_import_cycles():
    # A module's parent packages are loaded before it, so an edge to one's own parent package is no cycle.
    graph = {n: {t for t, _ in _imports(n) if not n.startswith(t + ".")} for n in MODULES}
    done: set[str] = set()
    path: list[str] = []

    def walk(n: str) -> None:
        if n in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))
        if n in done:
            return
        path.append(n)
        for t in sorted(graph[n]):
            walk(t)
        path.pop()
        done.add(n)

    for n in sorted(graph):
        walk(n)


def test_classes_and_functions_a_reader_can_hold():
    # no class over 350 lines, no function over 80 (docstrings included)
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            limit = 350 if isinstance(node, ast.ClassDef) else 80
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "; ".join(long)
