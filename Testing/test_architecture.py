"""The package layout holds: no import cycle between modules, and each room imports only the rooms below it.

The graph is computed from the source (every ``import`` and ``from ... import``, also those inside functions;
only ``if TYPE_CHECKING:`` blocks are left out, as they never run). docs/ARCHITECTURE.md explains the rooms.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "DSCPerfusionLib": REPO / "DSCPerfusion" / "DSCPerfusionLib",
    "CTVPlannerLib": REPO / "CTVPlanner" / "CTVPlannerLib",
    "GliomaProgressionLib": REPO / "GliomaProgression" / "GliomaProgressionLib",
}
LIB = "GliomaProgressionLib"

# What each part may import (besides itself and the standard library / third-party packages). Read from the
# bottom: the science packages know nothing of the extension's glue; cli is the top.
ALLOWED = {
    "DSCPerfusionLib": set(),
    "CTVPlannerLib": set(),
    "case": {"DSCPerfusionLib", "CTVPlannerLib"},
    "phantom": {"DSCPerfusionLib", "case"},
    "invasion": {"case"},
    "models": {"DSCPerfusionLib", "CTVPlannerLib", "case", "phantom", "invasion"},  # process: where the packages live
    "dependencies": {"models"},
    "mrml": {"CTVPlannerLib", "case", "models", "dependencies"},
    "report": {"DSCPerfusionLib", "CTVPlannerLib", "case", "models", "mrml"},
    "runs": {"DSCPerfusionLib", "CTVPlannerLib", "case", "models", "report", "invasion"},
    "cohort": {"DSCPerfusionLib", "CTVPlannerLib", "case", "phantom", "models", "report", "runs", "invasion"},
    "cli": {"DSCPerfusionLib", "CTVPlannerLib", "case", "phantom", "models", "mrml", "report", "runs", "cohort",
            "invasion"},
}
ROOMS = ("case", "cli", "cohort", "invasion", "models", "phantom", "report", "runs")


def module_name(path: Path) -> str:
    for package, folder in PACKAGES.items():
        if folder in path.parents:
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def modules() -> dict[str, Path]:
    return {module_name(path): path for folder in PACKAGES.values() for path in sorted(folder.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _import_nodes_of(child))
            continue
        yield from _import_nodes_of(node)


def _import_nodes_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _import_nodes(node)


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a ``from package import module`` counts as the module)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found |= {target for target in targets if target in known}
    return found - {name}


@functools.cache  # the sources do not change while the tests run: parsed once, not once per part
def import_graph() -> dict[str, frozenset[str]]:
    table = modules()
    known = set(table)
    return {name: frozenset(imported_modules(name, path, known)) for name, path in table.items()}


def part_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != LIB:
        return parts[0]
    return parts[1] if len(parts) > 1 else LIB


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the list of its modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert len(graph) > 60
    assert "GliomaProgressionLib.case.geometry" in graph["GliomaProgressionLib.case.registration"]
    assert "GliomaProgressionLib.cli.options" in graph["GliomaProgressionLib.cli.ctv"]
    assert "DSCPerfusionLib.pipeline" in graph["GliomaProgressionLib.runs.perfusion"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_allowed_table_itself_has_no_cycle():
    assert find_cycle(ALLOWED) is None


@pytest.mark.parametrize("part", sorted(ALLOWED))
@pytest.mark.slow
def test_each_part_imports_only_what_it_may(part):
    stray = sorted(f"{module} imports {target}" for module, targets in import_graph().items()
                   if part_of(module) == part for target in targets
                   if part_of(target) not in ALLOWED[part] | {part, LIB})
    assert not stray, "\n".join(stray)


def test_the_package_is_rooms_not_a_flat_list():
    folder = PACKAGES[LIB]
    flat = sorted(path.name for path in folder.glob("*.py"))
    assert flat == ["__init__.py", "dependencies.py", "mrml.py"]
    assert sorted(path.name for path in folder.iterdir() if (path / "__init__.py").exists()) == sorted(ROOMS)
    assert set(ROOMS) | {"mrml", "dependencies"} == set(ALLOWED) - {"DSCPerfusionLib", "CTVPlannerLib"}


def test_every_room_is_packaged_and_installed():
    """pip (pyproject.toml) and Slicer's build (CMakeLists.txt) must both know every room."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    cmake = (REPO / "GliomaProgression" / "CMakeLists.txt").read_text(encoding="utf-8")
    for room in ROOMS:
        assert f'"{LIB}.{room}"' in pyproject, room
        assert f"${{MODULE_NAME}}Lib/{room}/*.py" in cmake, room
