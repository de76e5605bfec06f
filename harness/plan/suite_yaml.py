"""Reading a suite file's YAML: a loader that refuses duplicate keys and alias bombs and reads ``1e-5`` as a
number, and one-line errors naming the file (and the line and column of a YAML mistake)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SuiteError
from harness.plan.yaml_budget import BudgetedLoader, YamlBudgetError


class _SuiteLoader(BudgetedLoader):
    """SafeLoader that refuses duplicate keys, reads 1e-5 as a float and refuses alias bombs
    (:class:`harness.plan.yaml_budget.BudgetedLoader`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_suite_mapping(source: str, sets: Sequence[str] = ()) -> Any:
    """The suite file's YAML as read (not yet checked), with command-line ``KEY=VALUE`` overrides applied
    (harness.plan.overrides)."""
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"{source}: cannot read ({' '.join(str(err).split())})") from None
    try:
        data = yaml.load(text, Loader=_SuiteLoader)
    except yaml.YAMLError as err:
        raise SuiteError(f"{source}: {_yaml_problem(err)}") from None
    except YamlBudgetError as err:
        raise SuiteError(f"{source}: {err}") from None
    if data is None:
        raise SuiteError(f"{source}: the suite file is empty")
    if sets:
        from .overrides import apply_sets

        data = apply_sets(data, sets)
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML ({' '.join(str(problem).split())})"
