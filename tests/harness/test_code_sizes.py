"""House style (issue 28): modules of at most 400 lines and functions of at most 60, in clic/ and harness/.

A module or function that outgrows them is split by concern (README, Architecture); `python tools/code_sizes.py`
prints the largest of each.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_LINES, FUNCTION_LINES = 400, 60


def _code_sizes():
    spec = importlib.util.spec_from_file_location("code_sizes", ROOT / "tools" / "code_sizes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_over_400_lines_and_no_function_over_60() -> None:
    sizes = _code_sizes()
    modules = sorted((lines, path) for lines, path in sizes.module_sizes() if lines > MODULE_LINES)
    functions = sorted((lines, name) for lines, name in sizes.function_sizes() if lines > FUNCTION_LINES)
    assert not modules, f"split by concern: {modules}"
    assert not functions, f"split into named parts: {functions}"


def test_the_counter_counts_a_function_from_def_to_its_last_line() -> None:
    import ast

    source = "def f():\n    a = 1\n    return a\n\n\nclass C:\n    def g(self):\n        pass\n"
    found = _code_sizes()._functions(ast.parse(source), "m.py", "")
    assert sorted(found) == [(2, "m.py:C.g"), (3, "m.py:f")]
