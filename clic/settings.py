"""One rule for every settings dataclass read from a config: an unknown key is an error that names it."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping


def reject_unknown_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
