"""The package's shape: layers import downward only, no import cycles, small modules.

Every import counts — module level, inside functions, under TYPE_CHECKING — since a deferred import is still a
dependency. `from package import name` depends on `package.name` when that is a module, else on `package`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "peftsft"

# Lowest first: a module may import its own layer and the layers before it, never a later one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("peftsft", "peftsft.core")),
    ("blocks", ("peftsft.models", "peftsft.base_identity", "peftsft.data", "peftsft.strategies", "peftsft.generation",
                "peftsft.loading")),
    ("levers", ("peftsft.levers",)),
    ("training", ("peftsft.training",)),
    ("tasks", ("peftsft.tasks",)),
    ("workflows", ("peftsft.workflows",)),
    ("artifacts", ("peftsft.artifacts",)),
    ("commands", ("peftsft.commands", "peftsft.__main__")),
]
MAX_LINES = 420  # "~400": a module past it is split into a package


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The peftsft modules `name` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - (node.level - 1) - (0 if is_package else 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer): the longest declared prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
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
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(source):
                problems.append(
                    f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                )
    return problems


def test_every_module_belongs_to_a_layer():
    assert [name for name in module_files() if layer_of(name) is None] == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_layers_import_downward_only():
    assert upward_imports(import_graph()) == []


def test_no_library_module_imports_the_command_line():
    commands = {name for name in module_files() if layer_of(name) == len(LAYERS) - 1}
    offenders = {source for source, targets in import_graph().items() if targets & commands and source not in commands}
    assert offenders == set()


def test_modules_stay_small():
    long = {name: n for name, path in module_files().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_catch_a_planted_cycle_and_an_upward_import(tmp_path):
    """The graph reader and both checks, on a throwaway package with each fault planted once."""
    root = tmp_path / "peftsft"
    (root / "core").mkdir(parents=True)
    (root / "training").mkdir()
    (root / "__init__.py").write_text("")
    (root / "core" / "__init__.py").write_text("")
    (root / "training" / "__init__.py").write_text("")
    (root / "core" / "a.py").write_text("def f():\n    from peftsft.training import b  # deferred: still counts\n")
    (root / "training" / "b.py").write_text("from ..core import a\n")
    graph = import_graph(root)
    assert graph["peftsft.core.a"] == {"peftsft.training.b"}
    assert graph["peftsft.training.b"] == {"peftsft.core.a"}
    assert cycles(graph) == [["peftsft.core.a", "peftsft.training.b"]]
    assert upward_imports(graph) == ["peftsft.core.a (core) imports peftsft.training.b (training)"]


@pytest.mark.parametrize("module, layer", [("peftsft.core.config", "core"), ("peftsft.data.build", "blocks"),
                                           ("peftsft.commands.cli", "commands"), ("peftsft", "core")])
def test_layer_lookup(module, layer):
    assert LAYERS[layer_of(module)][0] == layer
