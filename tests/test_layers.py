"""The layers of the package, read from its source: no import cycles between modules and no
import from a higher layer into a lower one (module-level, function-local and type-checking
imports alike).

The layer order, lowest first (a module may import from its own layer and the ones before it):

0. base — ``io`` (atomic writes, the JSON encoder), ``outputs`` (output path checks),
   ``configtools`` (the config base, ``ConfigError``), ``defaults`` (the table of defaults),
   ``console`` (terminal output), ``launch`` (refusing multi-process launchers): no science,
   importable from anywhere;
1. ground — ``models``, ``tasks``, ``prompts``, ``formatting``;
2. loops — ``training``, ``evaluation``;
3. bank — the prompt store and results database;
4. science — ``analysis``, ``transfer``, ``compose``: pure computations on prompts and models;
5. report — figures and tables from result objects and the results database;
6. runs — one unit of work each: ``runs`` and ``prediction`` (a prompt's answers for a file);
7. studies — many runs and a results folder;
8. cli — argument parsing.

``report`` sits below ``runs`` and ``studies``: studies hand it result objects, rows and an output
folder, so it can never reach a study's config class.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "promptatlas"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("io", "outputs", "configtools", "defaults", "console", "launch"),
    ("models", "tasks", "prompts", "formatting"),
    ("training", "evaluation"),
    ("bank",),
    ("analysis", "transfer", "compose"),
    ("report",),
    ("runs", "prediction"),
    ("studies",),
    ("cli",),
)

# Old import paths kept for one release: each of these modules *is* the module that moved
# (sys.modules alias), so it imports upward by design. Nothing in the package may import them.
MOVED = {
    "promptatlas.workflows": "promptatlas.runs.train",
    "promptatlas.experiments": "promptatlas.studies.experiment",
    "promptatlas.transfer.transfer": "promptatlas.runs.transfer",
    "promptatlas.transfer.crossmodel": "promptatlas.runs.crossmodel",
    "promptatlas.transfer.grid": "promptatlas.studies.grid",
    "promptatlas.analysis.suite": "promptatlas.studies.atlas",
    "promptatlas.tasks.check": "promptatlas.evaluation.taskcheck",
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module an imported name lives in (``a.b.c`` → ``a.b`` when ``c`` is not a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported promptatlas module, line) for every import statement anywhere in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if alias.name.split(".")[0] == PACKAGE and target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            if full.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                target = (
                    _resolve(f"{full}.{alias.name}") if f"{full}.{alias.name}" in MODULES else None
                )
                target = target or _resolve(full)
                if target:
                    yield target, node.lineno


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package's own __init__
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(
        f"{module} belongs to no layer; add {parts[1]!r} to LAYERS in tests/test_layers.py"
    )


def _graph() -> dict[str, set[str]]:
    return {
        module: {target for target, _ in _imports(module) if target != module}
        for module in MODULES
        if module not in MOVED
    }


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        if module not in MOVED:
            _layer(module)


def test_no_import_runs_up_the_layers() -> None:
    names = [", ".join(layer) for layer in LAYERS]
    wrong = []
    for module in MODULES:
        if module in MOVED:
            continue
        for target, line in _imports(module):
            if target in MOVED:
                wrong.append(f"{module}:{line} imports the old path {target} (use {MOVED[target]})")
            elif _layer(target) > _layer(module):
                wrong.append(
                    f"{module}:{line} imports {target}: layer [{names[_layer(target)]}] is above "
                    f"[{names[_layer(module)]}]"
                )
    assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_import_paths_are_the_moved_modules(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


def test_moved_names_of_the_transfer_package_still_resolve() -> None:
    import promptatlas.transfer as transfer
    from promptatlas.runs.transfer import transfer_run
    from promptatlas.studies.grid import run_grid

    assert transfer.run_grid is run_grid
    assert transfer.transfer_run is transfer_run
