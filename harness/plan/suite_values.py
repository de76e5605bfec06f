"""Generic checks of one YAML value at a key path (a mapping's keys, a list, an integer in a range, a finite
number, a string, a boolean, a choice): the messages every suite error shares, e.g.
``transfer.steps: expected an integer, got float 10.5``.

Why not pydantic (issue 28, item 4; pydantic 2.14 is installed). A spike declared the static sections
(transfer, match, resources, seeds) as pydantic models: 30 lines against about 75 here (their dataclasses and
section readers), but its errors were worse: ``Extra inputs are not permitted`` for ``seed`` (no "did you mean
'seeds'?"), ``Input should be a valid integer`` for ``steps: 10.5`` (today: ``expected an integer, got float
10.5``). Strict mode refuses every YAML list for a tuple field (``Input should be a valid tuple``); lax mode
silently accepts ``steps: true``, ``enabled: "yes"`` and ``seeds: [0, 0]``. The ``t_start`` bound, which depends on
``transfer.steps``, is reported at ``transfer``, not ``transfer.t_start[1]``. Getting today's messages back would
take a table from pydantic's error types (about 14 of them) to these messages, with the value and its type, plus
validators for lists, duplicates, hints and the cross-field bounds. The generic checks below would stay anyway for
the method-aware half (presets, a method's ``learn`` keys and loss terms, metric options, known only at run time).
Net: no smaller, and the errors no better, so the suite schema stays as dataclasses plus these checks.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from harness.errors import SuiteError


def type_name(value: Any) -> str:
    """The YAML-ish name of a value's type for a message (``null`` for None)."""
    return "null" if value is None else type(value).__name__


class ValueChecks:
    """Checks of one value each; every check knows its key path for the error line."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, message: str) -> NoReturn:
        raise SuiteError(f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}")

    def mapping(self, value: Any, key: str, allowed: Sequence[str] | None = None) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, f"expected a mapping, got {type_name(value)}")
        for name in value:
            if not isinstance(name, str):
                self.fail(key, f"keys must be strings, got {type_name(name)} {name!r}")
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
                self.fail(self.join(key, name), f"unknown key ({hint})")
        return value

    @staticmethod
    def join(key: str, name: str) -> str:
        return f"{key}.{name}" if key else name

    def list_of(self, value: Any, key: str, *, allow_empty: bool = False, unique: bool = True) -> list[Any]:
        if not isinstance(value, list):
            self.fail(
                key,
                f"expected a list, got {type_name(value)} {value!r}"
                if value is not None
                else "expected a list, got null",
            )
        if not value and not allow_empty:
            self.fail(key, "must not be empty")
        if unique:
            for index, item in enumerate(value):
                if item in value[:index]:
                    self.fail(f"{key}[{index}]", f"duplicate {item!r}")
        return value

    def integer(
        self, value: Any, key: str, *, minimum: int | None = None, maximum: int | None = None, what: str = ""
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {type_name(value)} {value!r}")
        self.check_range(value, key, minimum, maximum, what)
        return value

    def number(self, value: Any, key: str, *, minimum: float | None = None, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"expected a number, got {type_name(value)} {value!r}")
        if not math.isfinite(value):  # .inf / .nan would pass every range check below
            self.fail(key, f"must be a finite number, got {value}")
        if positive and value <= 0:
            self.fail(key, f"must be positive, got {value}")
        self.check_range(value, key, minimum, None, "")
        return float(value)

    def check_range(self, value: float, key: str, minimum: float | None, maximum: float | None, what: str) -> None:
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            self.fail(key, f"{value} is outside [{minimum}, {maximum}]{what}")
        if minimum is not None and value < minimum:
            self.fail(
                key, f"must be positive, got {value}" if minimum == 1 else f"must be at least {minimum}, got {value}"
            )
        if maximum is not None and value > maximum:
            self.fail(key, f"must be at most {maximum}, got {value}")

    def steps(self, value: Any, key: str) -> int:
        return self.integer(value, key, minimum=1)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {type_name(value)} {value!r}")
        if not value.strip():
            self.fail(key, "must not be empty")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {type_name(value)} {value!r}")
        return value

    def strings(self, value: Any, key: str, *, allow_empty: bool = False) -> tuple[str, ...]:
        items = self.list_of(value, key, allow_empty=allow_empty)
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(items))

    def resolution(self, value: Any, key: str, minimum: int) -> int:
        """An image side that this machine's memory can hold (clic.limits: a floor, checked before any work)."""
        from clic.limits import image_memory_problem

        value = self.integer(value, key, minimum=minimum)
        problem = image_memory_problem(value)
        if problem is not None:
            self.fail(key, f"{value} is too large: {problem}")
        return value

    def choice(self, value: Any, key: str, choices: Sequence[str]) -> str:
        value = self.string(value, key)
        if value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def finite_everywhere(self, value: Any, key: str) -> None:
        """No .inf or .nan anywhere in a free-form mapping (options passed on to a metric or a method)."""
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value}")
        if isinstance(value, Mapping):
            for name, item in value.items():
                self.finite_everywhere(item, self.join(key, str(name)))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self.finite_everywhere(item, f"{key}[{index}]")
