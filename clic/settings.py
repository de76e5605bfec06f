"""One rule for every settings dataclass read from a config: an unknown key is an error that names it."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, Mapping, TypeVar

C = TypeVar("C", bound="MethodConfig")


def reject_unknown_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")


class MethodConfig:
    """The common base of a method's learning config (a frozen dataclass): its dict form, reading it back
    with unknown keys refused, merging overrides (the ``MERGED`` mapping fields merge key by key, so
    ``{"terms": {"att": 0}}`` changes one loss weight), and ``validate``. ``LearnConfig`` and SingleInsert's
    config share it instead of each copying ``merged``."""

    MERGED: ClassVar[tuple[str, ...]] = ("terms",)
    WHAT: ClassVar[str] = "learning option(s)"
    terms: Mapping[str, Any]  # loss term -> weight or {"weight": w, ...}: every method config has its objective

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        if isinstance(data.get("terms"), Mapping):
            data["terms"] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data["terms"].items()}
        return data

    @classmethod
    def coerce(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Field values as the dataclass holds them (e.g. lists read from YAML as tuples)."""
        return data

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        reject_unknown_keys(cls, data, cls.WHAT)
        return cls(**cls.coerce(dict(data)))

    def merged(self: C, overrides: Mapping[str, Any] | None) -> C:
        if not overrides:
            return self
        base = self.to_dict()
        for key, value in overrides.items():
            if key in self.MERGED and isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return type(self).from_dict(base)

    def validate(self) -> None:
        """Raise ValueError for a value out of range (the default accepts everything)."""
