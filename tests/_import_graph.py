"""The package's import graph, read from the source (every import, lazy ones too).

Used by ``tests/test_layering.py``, and as a report of the package's shape::

    python -m tests._import_graph          # modules per folder, circles, longest modules

Every ``import`` and ``from ... import`` statement counts, wherever it is: at module
level, inside functions (lazy imports) and under ``if TYPE_CHECKING:``. A lazy import
still ties two modules together, so it may not point upward either.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = "napari_persam"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_files(root: Path = SOURCE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (the longest known prefix of each import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        parts = target.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in modules:
                if candidate != name:
                    found.add(candidate)
                return
            parts.pop()

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            for alias in node.names:
                # "from pkg import module" imports the module; "from mod import name" the module.
                if f"{base}.{alias.name}" in modules:
                    add(f"{base}.{alias.name}")
                else:
                    add(base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.JoinedStr)
            and node.args[0].values
            and isinstance(node.args[0].values[0], ast.Constant)
        ):
            # import_module(f"pkg.{name}"): any module under that prefix may be imported.
            prefix = str(node.args[0].values[0].value)
            for candidate in modules:
                if candidate.startswith(prefix) and candidate != name:
                    found.add(candidate)
    return found


def import_graph(root: Path = SOURCE) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def line_counts(root: Path = SOURCE) -> dict[str, int]:
    return {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in module_files(root).items()
    }


def report(root: Path = SOURCE) -> str:
    modules = module_files(root)
    graph = import_graph(root)
    per_folder: dict[str, int] = defaultdict(int)
    for path in modules.values():
        per_folder[str(path.parent.relative_to(root.parent))] += 1
    lines = ["modules per folder:"]
    lines += [f"  {folder}: {count}" for folder, count in sorted(per_folder.items())]
    found = circles(graph)
    lines.append(f"import circles (lazy imports included): {len(found)}")
    lines += ["  " + " <-> ".join(component) for component in found]
    counts = sorted(line_counts(root).items(), key=lambda item: -item[1])
    lines.append("longest modules:")
    lines += [f"  {count:4d} {name}" for name, count in counts[:5]]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(report())
