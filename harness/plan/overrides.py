"""``clic-bench run SUITE --set KEY=VALUE``: change any suite key from the command line, as lm-eval's
``--model_args`` or HELM's run entries do, instead of copying and editing the YAML for every sweep.

Each ``--set`` is applied to the suite's raw mapping (as read from the file) before the normal reader
(:func:`harness.plan.suite.suite_from_dict`), so an override gets exactly the checks and one-line errors a value in
the file gets. ``KEY`` is a dotted path with optional list indices (``transfer.t_start``, ``methods[0].presets``,
``resources.num_gpus``); ``VALUE`` is YAML (``[5,10,15]``, ``0.5``, ``bf16``, ``{num_gpus: 1}``). Missing mappings
on the way are created; a path through a non-mapping, or an index past a list's end, is one line. A relative path
given for ``model``, ``inpainting_model`` or ``manifest(s)`` is taken from the current folder (where the user
typed it), not from the suite file's.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[\d+\])*)")
_PATH_KEYS = ("model", "inpainting_model", "manifest", "manifests")


def parse_set(text: str) -> tuple[list[str | int], Any]:
    """``transfer.t_start=[5,10]`` -> (``["transfer", "t_start"]``, ``[5, 10]``)."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise UsageError(f"--set {text}: expected KEY=VALUE, e.g. --set transfer.t_start=[5,10,15]")
    path: list[str | int] = []
    for part in key.strip().split("."):
        match = _PART.fullmatch(part)
        if match is None:
            raise UsageError(f"--set {text}: {part!r} is not a key (letters, digits, _ and -, then optional [N])")
        path.append(match.group(1))
        path += [int(index) for index in re.findall(r"\[(\d+)\]", match.group(2))]
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise UsageError(f"--set {text}: the value is not valid YAML ({' '.join(str(err).split())[:120]})") from None
    return path, parsed


def _from_here(path: list[str | int], value: Any) -> Any:
    """A relative model or manifest path typed on the command line names a file from the current folder."""
    if not path or path[0] not in _PATH_KEYS:
        return value
    if isinstance(value, list):
        return [_from_here(path, item) for item in value]
    if isinstance(value, str) and not Path(value).is_absolute() and "://" not in value and Path(value).exists():
        return os.path.abspath(value)
    return value


def apply_sets(data: Any, sets: Sequence[str]) -> Any:
    """``data`` (a suite's raw mapping) with every ``--set`` applied in order; the input is not changed."""
    if not sets:
        return data
    if not isinstance(data, dict):
        return data  # the reader says what is wrong with the file itself
    data = copy.deepcopy(data)
    for text in sets:
        path, value = parse_set(text)
        value = _from_here(path, value)
        node: Any = data
        for depth, step in enumerate(path[:-1]):
            following = path[depth + 1]
            where = _where(path[: depth + 1])
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    raise UsageError(
                        f"--set {text}: {where} does not exist (the list has "
                        f"{len(node) if isinstance(node, list) else 0} items)"
                    )
                node = node[step]
                continue
            if not isinstance(node, dict):
                raise UsageError(f"--set {text}: {_where(path[:depth])} is not a mapping")
            if node.get(step) is None:
                node[step] = [] if isinstance(following, int) else {}
            node = node[step]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last > len(node):
                raise UsageError(f"--set {text}: {_where(path)} does not exist")
            node[last : last + 1] = [value]
        elif not isinstance(node, dict):
            raise UsageError(f"--set {text}: {_where(path[:-1])} is not a mapping")
        else:
            node[last] = value
    return data


def _where(path: Sequence[str | int]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text or "the suite"
