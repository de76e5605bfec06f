"""The import graph of clic/ and harness/, read statically (issue 28): no import loop, clic never imports harness
(nor Ray, pandas or benchmarks), and inside harness no arrow runs up.

Every ``import`` counts, module-level or inside a function (a lazy import is still a dependency and still closes a
loop); only ``if TYPE_CHECKING:`` imports, which never run, are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("clic", "harness")

# harness layers, bottom first. A module may import a lower layer, or its own layer; never a higher one, and never
# a sibling of the same height (execute and analyse both read the run folder through the store, and neither
# imports the other). Metrics sit below plan: a metric declares what it needs, the planner reads the declaration.
HARNESS_LAYERS = {
    "errors": (0, "errors"),
    "groups": (0, "groups"),
    "store": (1, "store"),
    "store_atomic": (1, "store"),
    "store_run_files": (1, "store"),
    "store_schema": (1, "store"),  # store.py and its parts
    "metrics": (2, "metrics"),
    "plan": (3, "plan"),
    "guards": (3, "plan"),  # guards: the input checks plan and the CLI share
    "remote_folder": (3, "plan"),  # the run folder on object storage: preflight checks it, the runner mirrors it
    "remote_lease": (3, "plan"),  # its lock (a lease object)
    "execute": (4, "execute"),
    "analyse": (4, "analyse"),
    "synth": (5, "entry"),
    "cli": (5, "entry"),
    "": (5, "entry"),  # entry points: the CLIs and the package
}
CLIC_NEVER_IMPORTS = ("harness", "benchmarks", "ray", "pandas")

# Known exceptions, each in a file another branch is changing when this test was written (issue 28, phase 1);
# the lead removes the entry when the file is split or moved. A new loop or upward import fails at once.
KNOWN_UPWARD = {}
KNOWN_LOOPS: list[set[str]] = []  # none left: the shared parts of clic/models.py and clic/world/train.py moved down


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement except those under ``if TYPE_CHECKING:``."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The absolute names a module imports (``from pkg import mod`` counts as ``pkg.mod`` when that is a module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names = set()
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        for alias in node.names:
            names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _loops(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan), over project modules only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in graph:
                continue
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(component)

    for node in graph:
        if node not in index:
            connect(node)
    return loops


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    return HARNESS_LAYERS[parts[1] if len(parts) > 1 else ""]


def test_no_import_loop() -> None:
    loops = [loop for loop in _loops(_graph()) if loop not in KNOWN_LOOPS]
    assert not loops, [sorted(loop) for loop in loops]


def test_clic_never_imports_harness_ray_pandas_or_benchmarks() -> None:
    offenders = sorted(
        (name, target)
        for name, targets in _graph().items()
        if name.startswith("clic")
        for target in targets
        if target.split(".")[0] in CLIC_NEVER_IMPORTS
    )
    assert not offenders, offenders


def test_no_arrow_up_inside_harness() -> None:
    """plan → execute / analyse; metrics below plan; errors, groups and the store at the bottom."""
    offenders = []
    for name, targets in _graph().items():
        if not name.startswith("harness"):
            continue
        height, layer = _layer(name)
        for target in targets:
            if not target.startswith("harness") or (name, target) in KNOWN_UPWARD:
                continue
            target_height, target_layer = _layer(target)
            if target_layer != layer and target_height >= height:
                offenders.append(f"{name} ({layer}) imports {target} ({target_layer})")
    assert not offenders, sorted(offenders)


def test_the_checks_see_a_loop_and_an_upward_import() -> None:
    """The checks themselves: a made-up graph with a loop and a metric importing the planner is caught."""
    graph = {
        "harness.plan.a": {"harness.plan.b"},
        "harness.plan.b": {"harness.plan.a"},
        "harness.metrics.m": {"harness.plan.a"},
    }
    assert _loops(graph) == [{"harness.plan.a", "harness.plan.b"}]
    assert _layer("harness.metrics.m")[0] < _layer("harness.plan.a")[0]
    assert _layer("harness.execute.runner") == (4, "execute") and _layer("harness.analyse.report") == (4, "analyse")
