"""What validating a manifest finds: each :class:`Problem` (of a row or of the whole manifest), each good row as a
:class:`PairSpec`, and the :class:`ManifestReport` of both. (Re-exported by :mod:`harness.plan.manifest`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .jobs import Pair


@dataclass(frozen=True)
class Problem:
    """One problem of a manifest: of a row (``row`` set) or of the whole manifest (``row`` None)."""

    row: int | None
    pair_id: str | None
    column: str | None
    message: str
    manifest: str = "manifest"

    def __str__(self) -> str:
        where = [self.manifest if self.row is None else f"{self.manifest} row {self.row}"]
        if self.row is not None and self.pair_id is not None:
            where.append(f"(pair_id {self.pair_id!r})")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        separator = ": " if self.row is None else " "
        head = where[0] + (separator + " ".join(where[1:]) if len(where) > 1 else "")
        return f"{head}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class PairSpec(Pair):
    """A good manifest row: locations resolved (absolute local paths or URIs), other fields as written. It is
    the :class:`~harness.plan.jobs.Pair` the job graph reads, plus the row number and the columns only people read."""

    row: int
    concept: str | None = None
    tags: tuple[str, ...] = ()
    source_part: str | None = None
    target_part: str | None = None
    pattern: str | None = None
    pattern_params: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)  # the row as read

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        data["raw"] = dict(self.raw)
        return data


@dataclass
class ManifestReport:
    """What :func:`load_manifest` found: good rows, row problems and manifest-level problems."""

    manifest: str
    total_rows: int
    rows: list[PairSpec]
    problems: list[Problem]  # one per bad cell, in row order
    manifest_problems: list[Problem]
    rows_checked: bool = True  # False when the manifest-level problems stopped row validation

    @property
    def usable(self) -> bool:
        """False when the manifest as a whole is broken: a run must refuse it."""
        return not self.manifest_problems

    @property
    def ok(self) -> bool:
        return self.usable and not self.problems

    @property
    def bad_rows(self) -> int:
        return len({p.row for p in self.problems})

    def lines(self) -> list[str]:
        return [str(p) for p in (*self.manifest_problems, *self.problems)]

    def summary(self) -> str:
        if not self.rows_checked:
            return "rows not checked: the manifest itself is unusable"
        counts = f"{self.total_rows} rows: {len(self.rows)} good, {self.bad_rows} bad"
        if not self.usable:  # e.g. an unknown (perhaps misspelt) column: its data would be silently ignored
            return f"{counts}; the manifest as a whole is refused ({len(self.manifest_problems)} problem(s) above), so no row runs"
        return counts

    def exit_code(self) -> int:
        return 2 if not self.usable else (1 if self.problems else 0)
