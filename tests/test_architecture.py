"""The package's shape: layers that only import downwards, no import cycles, commands independent."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spkver"

# Lowest first; a module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("base", ["spkver.errors", "spkver.fileio", "spkver.run", "spkver.synth"]),
    ("audio", ["spkver.audio"]),
    ("features", ["spkver.features"]),
    ("gmm", ["spkver.gmm"]),
    ("ivector", ["spkver.ivector"]),
    ("storage", ["spkver.storage"]),
    ("backend", ["spkver.backend"]),
    ("api", ["spkver.api"]),
    ("demo", ["spkver.demo"]),
    ("cli", ["spkver.cli"]),
    ("package", ["spkver.__init__", "spkver.__main__"]),
]
COMMANDS = ["spkver.cli.train", "spkver.cli.speakers", "spkver.cli.evaluation", "spkver.cli.info", "spkver.cli.cache"]
SHARED_CLI = {"spkver.cli.options", "spkver.cli.report"}  # what every command may use


def module_name(path: Path) -> str:
    return ".".join(("spkver",) + path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def resolve(name: str) -> str:
    """The module file an import of ``name`` runs (a package's ``__init__``)."""
    return name if name in MODULES else f"{name}.__init__"


def imports(module: str) -> set[str]:
    """The spkver modules ``module`` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "spkver"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "spkver":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES or f"{sub}.__init__" in MODULES:
                    found.add(resolve(sub))
                elif node.module == "spkver" and alias.name == "__version__":
                    continue  # a constant of the package itself
                else:
                    found.add(resolve(node.module))
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {i} ({LAYERS[layer_of(i)][0]})"
             for m, targets in GRAPH.items() for i in sorted(targets) if layer_of(i) > layer_of(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    state, path, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_commands_import_the_library_never_each_other():
    for command in COMMANDS:
        cli_imports = {m for m in GRAPH[command] if m.startswith("spkver.cli.")}
        assert cli_imports <= SHARED_CLI, f"{command} imports {cli_imports}"


def test_the_layering_test_sees_imports():
    assert "spkver.gmm.estep" in GRAPH["spkver.gmm.em"]
    assert "spkver.gmm._fused" in GRAPH["spkver.gmm.kernels"]  # a lazy import, inside a function


def test_test_modules_take_shared_helpers_from_helpers_never_conftest():
    tests = sorted(Path(__file__).resolve().parent.glob("*.py"))
    assert Path(__file__).resolve() in tests
    for path in tests:
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "conftest" not in imported, f"{path.name}: import shared helpers from helpers.py, not conftest"
