"""The package's shape: layers import downward only, no import cycles, small modules.

Every import counts — module level, inside functions, under TYPE_CHECKING — since a deferred import is still a
dependency. `from package import name` depends on `package.name` when that is a module, else on `package`.
"""

from __future__ import annotations

import ast
import re
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


# ---------------------------------------------------------------------------------------------- one owner per decision

LEVERS = "peftsft.levers"
# the places allowed to touch library internals: a lever (behind its version gate) and the compatibility module
INTERNALS_ALLOWED = (LEVERS, "peftsft.core.compat")
LIBRARIES = ("torch", "trl", "transformers", "peft", "accelerate", "bitsandbytes")
# modules of those libraries that are internals (not their documented API)
INTERNAL_MODULES = ("trl.trainer.", "transformers.masking_utils", "transformers.integrations", "transformers.modeling_",
                    "peft.tuners", "torch._")  # fmt: skip
PRIVATE_ATTRIBUTES = {"_attn_implementation", "_shared_state"}  # library internals reached through an object


def _outside(module: str, prefixes: tuple[str, ...]) -> bool:
    return not any(module == p or module.startswith(p + ".") for p in prefixes)


def lever_rule_calls(root: Path = PACKAGE) -> list[str]:
    """Calls of a lever's rule (`decide…`) outside the lever's own module and the levers' door (levers/__init__);
    imports of a lever's module from outside the levers package."""
    problems = []
    files = module_files(root)
    for name, path in sorted(files.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        for target in imports_of(name, path, set(files)):
            if target.startswith(LEVERS + ".") and _outside(name, (LEVERS,)):
                problems.append(f"{name} imports {target}: outside the levers package, only `{LEVERS}` is imported")
        if name == LEVERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                called = getattr(node.func, "attr", None) or getattr(node.func, "id", None) or ""
                if called.startswith("decide") and called != "decide_levers" and called not in defined:
                    problems.append(f"{name} calls the lever rule {called} (line {node.lineno})")
    return problems


def internals_touched(root: Path = PACKAGE) -> list[str]:
    """Library internals reached outside the levers and the compatibility module; any `inspect.getsource`."""
    problems = []
    for name, path in sorted(module_files(root).items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "getsource":
                problems.append(f"{name}:{node.lineno} reads source text (inspect.getsource)")
        if not _outside(name, INTERNALS_ALLOWED):
            continue
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in LIBRARIES:
                        aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                a.name for a in getattr(node, "names", [])] if isinstance(node, ast.Import) else []  # fmt: skip
            for module in modules:
                if module.startswith(INTERNAL_MODULES):
                    problems.append(f"{name}:{node.lineno} imports {module}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
                private = [a.name for a in node.names if a.name.startswith("_")]
                problems += [f"{name}:{node.lineno} imports {node.module}.{p}" for p in private]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr in PRIVATE_ATTRIBUTES:
                problems.append(f"{name}:{node.lineno} reads .{node.attr}")
                continue
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                dotted = ".".join([aliases[value.id], *reversed(chain)])
                if any(part.startswith("_") and not part.startswith("__") for part in dotted.split(".")):
                    problems.append(f"{name}:{node.lineno} reaches {dotted}")
    return sorted(set(problems))


def test_a_levers_rule_is_called_only_by_its_module_and_the_levers_door():
    assert lever_rule_calls() == []


def test_library_internals_are_touched_only_in_a_lever_or_the_compatibility_module():
    assert internals_touched() == []


def test_the_ownership_checks_catch_planted_violations(tmp_path):
    """Each check, on a throwaway package with its fault planted once."""
    root = tmp_path / "peftsft"
    for folder in ("levers", "training", "core"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "levers" / "precision.py").write_text("def decide(situation):\n    return 'bf16'\n")
    (root / "levers" / "__init__.py").write_text("from peftsft.levers import precision\n"
                                                 "def decide_levers(s):\n    return precision.decide(s)\n")
    (root / "training" / "plan.py").write_text(
        "from peftsft.levers import precision\nimport torch\nimport trl.trainer.utils as trl_utils\n"
        "def f(model):\n    precision.decide(None)\n    torch._softmax_backward_data\n    trl_utils._CHUNK\n"
        "    return model.config._attn_implementation\n")
    (root / "core" / "compat.py").write_text("import torch\ndef g():\n    return torch._C\n")  # allowed here
    assert lever_rule_calls(root) == [
        "peftsft.training.plan imports peftsft.levers.precision: outside the levers package, only `peftsft.levers` "
        "is imported",
        "peftsft.training.plan calls the lever rule decide (line 5)",
    ]
    assert internals_touched(root) == [
        "peftsft.training.plan:3 imports trl.trainer.utils",
        "peftsft.training.plan:6 reaches torch._softmax_backward_data",
        "peftsft.training.plan:7 reaches trl.trainer.utils._CHUNK",
        "peftsft.training.plan:8 reads ._attn_implementation",
    ]


RUN_DIR_OWNER = PACKAGE / "core" / "rundir"  # RunDir: the one reader (and writer) of run dirs
RUN_DIR_FILES = ("recipe.resolved.toml", "summary.json", "status.json", "metrics.jsonl")
# a literal that *is* one of those files (or a path ending in one): code about to open it. Messages that mention a
# file for the user ("… (no recipe.resolved.toml)") are not paths and pass.
RUN_DIR_PATH = re.compile(r"(?:.*[/\\])?(?:" + "|".join(re.escape(name) for name in RUN_DIR_FILES) + r")")
PEFT_LOADERS = {"PeftModel", "PeftMixedModel"}  # and AutoPeftModel*: their from_pretrained reads an adapter dir
# peft's and transformers' `load_adapter(path, adapter_name=…)` (RunDir.load_adapter takes a model and a name)
PEFT_LOAD_KEYWORDS = {"adapter_name", "is_trainable", "peft_model_id", "adapter_state_dict", "peft_config"}
RANK_NAMES = {"RANK", "LOCAL_RANK"}  # the launcher's environment: read in core only (compat, rundir)
RANK_ATTRIBUTES = {"is_main_process", "is_local_main_process", "process_index", "local_process_index"}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _is_peft_loader(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name in PEFT_LOADERS or name.startswith("AutoPeftModel")


def _reads_an_adapter_path(call: ast.Call) -> bool:
    first = call.args[0] if call.args else None
    stringy = isinstance(first, (ast.Constant, ast.JoinedStr)) or (
        isinstance(first, ast.Call) and isinstance(first.func, ast.Name) and first.func.id == "str")
    return stringy or any(keyword.arg in PEFT_LOAD_KEYWORDS for keyword in call.keywords)


def run_dir_readers(path: Path) -> list[str]:
    """What in one module reads a run dir without RunDir: a run-dir file's path, a PEFT adapter loaded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if RUN_DIR_PATH.fullmatch(node.value.strip()):
                found.append((node.lineno, f"the run-dir file {node.value.strip()!r}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "from_pretrained" and _is_peft_loader(node.func.value):
                found.append((node.lineno, "a PEFT adapter loaded (from_pretrained)"))
            elif node.func.attr == "load_adapter" and _reads_an_adapter_path(node):
                found.append((node.lineno, "a PEFT adapter loaded (load_adapter)"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def rank_readers(path: Path) -> list[str]:
    """What in one module decides the process's rank itself: the launcher's variables, accelerate's state."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in RANK_NAMES:
            found.append((node.lineno, f"reads {node.value}"))
        elif isinstance(node, ast.Attribute) and node.attr in RANK_ATTRIBUTES:
            found.append((node.lineno, f"reads .{node.attr}"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def offenders(check, root: Path, allowed: Path) -> dict[str, list[str]]:
    return {str(path.relative_to(root.parent)): found for path in sorted(root.rglob("*.py"))
            if allowed not in path.parents and (found := check(path))}  # fmt: skip


def test_run_dirs_are_read_through_run_dir_only():
    """Paths, recipe, status, summary, metrics and adapter loading have one owner: peftsft.core.rundir."""
    assert offenders(run_dir_readers, PACKAGE, RUN_DIR_OWNER) == {}


def test_the_main_process_is_decided_in_core_only():
    """`core.rundir.is_main_process()` (through core.compat) is the one rule; nothing else reads ranks."""
    assert offenders(rank_readers, PACKAGE, PACKAGE / "core") == {}


def test_the_owner_checks_catch_a_planted_second_reader(tmp_path):
    """Each way of reading a run dir behind RunDir's back, planted once, is found; mentions for users are not."""
    root = tmp_path / "peftsft"
    (root / "core" / "rundir").mkdir(parents=True)
    (root / "core" / "rundir" / "__init__.py").write_text('RECIPE = "recipe.resolved.toml"\n')  # the owner: fine
    (root / "ui.py").write_text(
        '"""Reads summary.json (a docstring may say so)."""\n'
        'import json, os\n'
        'def read(path):\n'
        '    message = f"{path}: not a run dir (no recipe.resolved.toml)"  # a message: fine\n'
        '    summary = json.loads((path / "summary.json").read_text())\n'
        '    status = path / f"{path.name}/status.json"\n'
        '    rank = int(os.environ.get("RANK", 0))\n'
        '    return summary, status, rank, message\n'
    )
    (root / "serve.py").write_text(
        "from peft import PeftModel\n"
        "def load(base, run, model):\n"
        "    model = PeftModel.from_pretrained(base, str(run / 'adapter'))\n"
        "    model.load_adapter(str(run / 'adapter'), adapter_name='other')\n"
        "    run.load_adapter(model, 'x')  # RunDir's own method: fine\n"
        "    return model, state.is_main_process\n"
    )
    assert offenders(run_dir_readers, root, root / "core" / "rundir") == {
        "peftsft/serve.py": ["line 3: a PEFT adapter loaded (from_pretrained)",
                             "line 4: a PEFT adapter loaded (load_adapter)"],
        "peftsft/ui.py": ["line 5: the run-dir file 'summary.json'", "line 6: the run-dir file '/status.json'"],
    }
    assert offenders(rank_readers, root, root / "core") == {
        "peftsft/serve.py": ["line 6: reads .is_main_process"], "peftsft/ui.py": ["line 7: reads RANK"]}
