"""tests/clic tests the method library alone: nothing they import may pull in harness or Ray (issue 28), so
``pytest tests/clic`` runs without either and a clic change is tested by what clic is."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
CLIC_TESTS = Path(__file__).resolve().parent
FORBIDDEN = ("harness", "ray")


def _imported_modules(path: Path) -> set[str]:
    """Every module name an ``import``/``from ... import`` statement of the file names, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _local_file(module: str) -> Path | None:
    """The test-folder module (tests/NAME.py or tests/clic/NAME.py) an import names, if it is one."""
    for folder in (CLIC_TESTS, TESTS):
        if (folder / f"{module}.py").is_file():
            return folder / f"{module}.py"
    return None


def test_clic_tests_and_their_helpers_name_no_harness_or_ray_import() -> None:
    """Read statically: each test file here, the conftest above it and every test-folder module they import."""
    pending = [*sorted(CLIC_TESTS.glob("*.py")), TESTS / "conftest.py"]
    seen: set[Path] = set()
    offenders = []
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(TESTS)} imports {module}")
            elif (local := _local_file(module.split(".")[0])) is not None:
                pending.append(local)
    assert not offenders, offenders


def test_importing_every_clic_test_module_loads_no_harness_or_ray() -> None:
    """Run: one fresh interpreter imports every module of tests/clic (and so all of clic they use), then lists
    what came in. Catches what the static read cannot: an import inside clic itself or a library's."""
    modules = sorted(path.stem for path in CLIC_TESTS.glob("test_*.py"))
    probe = (
        f"import sys; sys.path[:0] = [{str(CLIC_TESTS)!r}, {str(TESTS)!r}]\n"
        f"for name in {modules!r}: __import__(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FORBIDDEN)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=TESTS.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
