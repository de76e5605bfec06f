"""One rule for every settings dataclass read from a config (learning configs and the transfer, generation and
matching settings): unknown keys are refused by name, values are coerced to the field types the dataclass holds,
overrides merge key by key, and ``validate`` checks ranges. :meth:`clic.methods.base.Method.resolve` is the one
place a method's preset and a caller's overrides become such an object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="Settings")


def reject_unknown_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming the keys of ``data`` that are not fields of the dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")


class Settings:
    """The common base of every frozen settings dataclass: its dict form (what job ids hash and rows record),
    reading it back with unknown keys refused and the result validated, and merging overrides (the ``MERGED``
    mapping fields merge key by key, so ``{"terms": {"att": 0}}`` changes one loss weight)."""

    MERGED: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = "setting(s)"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        for key in self.MERGED:
            if isinstance(data.get(key), Mapping):
                data[key] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data[key].items()}
        return data

    @classmethod
    def coerce(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Field values as the dataclass holds them (e.g. lists read from YAML as tuples)."""
        return data

    @classmethod
    def build(cls: type[S], data: Mapping[str, Any]) -> S:
        """An instance from ``data`` (unknown keys refused), not yet validated."""
        reject_unknown_keys(cls, data, cls.WHAT)
        return cls(**cls.coerce(dict(data)))

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """An instance from ``data``, validated: ``ValueError`` names the key or value that is wrong."""
        settings = cls.build(data)
        try:
            settings.validate()
        except TypeError as error:  # e.g. a string where a number belongs: compared with a number
            raise ValueError(f"{cls.WHAT}: a value has the wrong type ({error})") from None
        return settings

    def merged(self: S, overrides: Mapping[str, Any] | None) -> S:
        """A copy with ``overrides`` applied (not validated: :meth:`from_dict` or ``validate`` does that). Overrides
        that are already a resolved instance of this class replace it whole (a plan's resolved config)."""
        if isinstance(overrides, type(self)):
            return overrides
        if not overrides:
            return self
        base = self.to_dict()
        for key, value in overrides.items():
            if key in self.MERGED and isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return type(self).build(base)

    def validate(self) -> None:
        """Raise ValueError for a value out of range (the default accepts everything)."""


class MethodConfig(Settings):
    """The common base of a method's learning config (a frozen dataclass with an objective, ``terms``).
    ``LearnConfig``, SingleInsert's and ConceptExpress's configs share it."""

    MERGED: ClassVar[tuple[str, ...]] = ("terms",)
    WHAT: ClassVar[str] = "learning option(s)"
    terms: Mapping[str, Any]  # loss term -> weight or {"weight": w, ...}: every method config has its objective
