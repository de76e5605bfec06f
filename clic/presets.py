"""A method preset as a declared list of settings, each value naming its source.

A :class:`Setting` is one value of one task's configuration (``learn.lr``, ``learn.terms.con``,
``transfer.t_start`` ...) with where it comes from: a paper section, a released file and line, or "our
choice". :func:`preset_overrides` turns the list into the ``{"learn": {...}, "transfer": {...}}`` overrides
a :class:`clic.methods.base.Method` preset is, so what is printed (``clic methods show``) and shown in a
run report's provenance is exactly what runs.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# method -> module with ``DECLARED = {preset: (Setting, ...)}``, importable without torch (the report reads it)
DECLARED_MODULES = {"clic": "clic.methods.clic_sources"}


@dataclass(frozen=True)
class Setting:
    key: str  # "<task>.<field>[.<sub-field>]", e.g. "learn.augment.p_flip"
    value: Any
    source: str

    @property
    def task(self) -> str:
        return self.key.split(".", 1)[0]


def preset_overrides(settings: Iterable[Setting]) -> dict[str, dict[str, Any]]:
    """``{task: {field: value}}``; a dotted field below the task nests (``augment.p_flip``)."""
    overrides: dict[str, dict[str, Any]] = {}
    for setting in settings:
        task, _, path = setting.key.partition(".")
        node = overrides.setdefault(task, {})
        *parents, leaf = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        if leaf in node:
            raise ValueError(f"setting {setting.key!r} is declared twice")
        node[leaf] = setting.value
    return overrides


def replaced(settings: Iterable[Setting], *changes: Setting) -> tuple[Setting, ...]:
    """``settings`` with the keys of ``changes`` replaced by them (a preset that differs in a few values)."""
    keys = {change.key for change in changes}
    return tuple(s for s in settings if s.key not in keys) + changes


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return json.dumps(value, default=str) if isinstance(value, Mapping) else str(value)


PROJECT_CHOICE = "project's choice"


def is_project_choice(source: str) -> bool:
    """A value (or part of it) that no source states: its source text says "our choice" / "the project's choice"."""
    text = source.lower()
    return "our choice" in text or PROJECT_CHOICE in text


def settings_table(settings: Iterable[Setting]) -> list[dict[str, str]]:
    """Rows ``{setting, value, source, origin}`` for printing and for the report's provenance; ``origin`` is
    "project's choice" where no source states the value (or a part of it), else "source"."""
    return [
        {
            "setting": s.key,
            "value": format_value(s.value),
            "source": s.source,
            "origin": PROJECT_CHOICE if is_project_choice(s.source) else "source",
        }
        for s in settings
    ]


def format_settings(settings: Iterable[Setting]) -> str:
    rows = settings_table(settings)
    width = max((len(r["setting"]) for r in rows), default=0)
    value_width = min(max((len(r["value"]) for r in rows), default=0), 48)
    return "\n".join(
        f"{r['setting']:<{width}}  {r['value']:<{value_width}}  "
        f"{'[' + PROJECT_CHOICE + '] ' if r['origin'] == PROJECT_CHOICE else ''}{r['source']}"
        for r in rows
    )


def declared_settings(method: str, preset: str) -> tuple[Setting, ...] | None:
    """The declared settings of a method preset, or None if the method declares none."""
    module = DECLARED_MODULES.get(method)
    return importlib.import_module(module).DECLARED.get(preset) if module else None
