"""The package's layout shows its architecture: small modules, no import cycles between them.

STYLE: modules are named by concept and stay under 300 lines; a module that grows past that is
doing two jobs and is split along them. Module-level imports between eventyard modules form no
cycle (imports inside functions and under ``TYPE_CHECKING`` are not followed: they run later,
or never).
"""

from __future__ import annotations

import ast
from pathlib import Path

import eventyard

SOURCE = Path(eventyard.__file__).parent
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions or classes' methods,
    not under ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                found += _module_level_imports(block)
        elif isinstance(node, ast.With):
            found += _module_level_imports(node.body)
    return found


def _imported(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The eventyard modules ``node`` in module ``name`` imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    base = node.module or ""
    if node.level:
        package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    targets = set()
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in MODULES:  # `from eventyard.memory import wire`: the module itself
            targets.add(submodule)
        elif base in MODULES:  # `from eventyard.x import Name`: module x (or package x)
            targets.add(base)
    return targets


def import_graph() -> dict[str, set[str]]:
    """Module -> the eventyard modules it imports at module level."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in _module_level_imports(tree.body):
            edges |= _imported(name, node)
        graph[name] = edges - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path) through each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_through(group, graph) for group in groups]


def _path_through(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A cycle within ``group``, starting from its first module."""
    start = min(group)
    path, seen = [start], {start}
    while True:
        following = sorted(t for t in graph[path[-1]] if t in group)
        if start in following and len(path) > 1:
            return [*path, start]
        step = next((t for t in following if t not in seen), None)
        if step is None:
            return [*path, following[0]]
        path.append(step)
        seen.add(step)


def test_no_module_is_over_300_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in MODULES.items()}
    over = sorted(f"{name}: {lines} lines" for name, lines in sizes.items() if lines > MAX_LINES)
    assert over == [], f"split these along their responsibilities (STYLE: 50-300 lines): {over}"


def test_no_import_cycle_between_eventyard_modules() -> None:
    cycles = [" -> ".join(cycle) for cycle in find_cycles(import_graph())]
    assert cycles == [], f"module-level import cycles: {cycles}"


def test_the_cycle_check_finds_a_cycle_and_names_its_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_follows_module_level_imports_only() -> None:
    graph = import_graph()
    # `from eventyard.memory import declaring, wire` names the modules themselves.
    assert {"eventyard.memory.declaring", "eventyard.memory.wire"} <= graph["eventyard.memory.transport"]
    # The memory state names its consumption only under TYPE_CHECKING: not an import that runs.
    assert "eventyard.memory.consumption" not in graph["eventyard.memory.state"]
    assert "eventyard.memory.state" in graph["eventyard.memory.consumption"]
