"""Parquet manifests: the schema, validation that reports every bad row in one pass, and a folder builder.

A manifest has one row per (source, target) pair; see :data:`MANIFEST_SCHEMA` (and "Contracts" in the design notes, ../shared/DESIGN.md, outside this repository).
Paths are relative to the manifest's folder, or URIs:

* local relative paths (``img/p7.png``) resolve against the manifest's folder and must stay inside it;
  absolute paths, ``file://`` URIs and ``..`` that climbs out of the folder are refused unless
  ``allow_outside`` (``--allow-outside``), so a manifest and its folder move together. Symlinks are
  resolved and held to the same rule: one inside the folder that leads outside it is refused too.
* an unknown column (often a misspelt one, whose data would be ignored) makes the whole manifest unusable:
  ``validate`` still checks and counts the rows, and says that none of them runs.
* remote URIs (``s3://``, ``gs://``, ``memory://``, … any scheme fsspec can open) are allowed as they are;
  in a manifest that is itself at a URI, relative paths resolve against its folder. A scheme whose package is
  missing is one line naming it; reads are bounded in time and size (:mod:`harness.plan.remote`).

Rows are numbered from 0, as ``pandas.read_parquet(manifest).iloc[row]``.

Folder convention (``clic-bench manifest from-folder DIR``, built by :mod:`harness.plan.folder`)::

    DIR/
      <category>/                     one folder per category, e.g. furniture/
        meta.json                     optional: defaults for every pair of the category (keys below)
        <pair_id>/                    one folder per pair; its name is the pair_id (unique across DIR)
          source.png                  required (.png, .jpg, .jpeg, .webp, .bmp, .tif or .tiff)
          source_mask.png             optional; absent -> automatic source mask
          target.png                  required
          target_mask.png             optional; absent -> RoI matching predicts it
          target_mask_gt.png          optional; ground truth of the target region, for IoU
          expected.png                optional; synthetic sets: the target with the concept drawn in
          meta.json                   optional: {"source_object": "chair", "target_object": "chair",
                                                 "concept": "...", "tags": ["..."], "source_part": "...",
                                                 "target_part": "...", "pattern": "...",
                                                 "pattern_params": {...}}

Object words default to the category folder's name (so name categories by object, ``chair/``, or give
``source_object``/``target_object`` in a meta.json). Hidden entries (``.*``) are ignored; any other
image file in a pair folder is an error, so a misspelt ``source-mask.png`` is not silently dropped.
The manifest (default ``DIR/manifest.parquet``) stores paths relative to its own folder.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from clic.cli_checks import placeholder_problem
from clic.io import aspect_ratios_match

from .locations import ManifestBase, is_uri, open_location, resolve_location
from .manifest_files import file_problem, run_checks
from .manifest_report import ManifestReport, PairSpec, Problem

MANIFEST_VERSION = "1"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("source_image", pa.string(), nullable=False),
        pa.field("source_mask", pa.string()),  # null -> automatic source mask
        pa.field("source_object", pa.string(), nullable=False),
        pa.field("target_image", pa.string(), nullable=False),
        pa.field("target_mask", pa.string()),  # null -> RoI matching
        pa.field("target_object", pa.string(), nullable=False),
        pa.field("target_mask_gt", pa.string()),  # ground truth for IoU
        pa.field("concept", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
    ],
    metadata={"clic.manifest_version": MANIFEST_VERSION},
)

# Written by the synthetic-set generator (harness/synth); optional in every manifest.
GROUND_TRUTH_FIELDS = (
    pa.field("expected_image", pa.string()),
    pa.field("source_part", pa.string()),
    pa.field("target_part", pa.string()),
    pa.field("pattern", pa.string()),
    pa.field("pattern_params", pa.string()),  # JSON object
)

REQUIRED_COLUMNS = tuple(f.name for f in MANIFEST_SCHEMA if not f.nullable)
KNOWN_FIELDS: dict[str, pa.Field] = {f.name: f for f in (*MANIFEST_SCHEMA, *GROUND_TRUTH_FIELDS)}
IMAGE_COLUMNS = ("source_image", "target_image", "expected_image")
MASK_COLUMNS = ("source_mask", "target_mask", "target_mask_gt")
# Which image each mask (or derived image) must match in shape.
SHAPE_PARTNER = {
    "source_mask": "source_image",
    "target_mask": "target_image",
    "target_mask_gt": "target_image",
    "expected_image": "target_image",
}


# ---------------------------------------------------------------------------------------- loading


def _is_string_type(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return _is_string_type(data_type.value_type)
    return (
        pa.types.is_null(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def _type_matches(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_list(expected):
        if pa.types.is_null(actual):
            return True
        is_list = pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_list_view(actual)
        return is_list and _is_string_type(actual.value_type)
    return _is_string_type(actual)


def _schema_problems(schema: pa.Schema, problem: Callable[..., Problem]) -> tuple[list[Problem], bool]:
    """Manifest-level problems, and whether rows can still be read (unknown columns do not stop that)."""
    problems = []
    rows_readable = True
    duplicated = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if duplicated:
        problems.append(problem(message=f"duplicate column(s): {', '.join(duplicated)}"))
        rows_readable = False
    for column in schema:
        if column.name not in KNOWN_FIELDS:
            close = _closest_column(column.name)
            hint = f"did you mean {close!r}?" if close else f"known: {', '.join(KNOWN_FIELDS)}"
            problems.append(problem(column=column.name, message=f"unknown column ({hint})"))
        elif not _type_matches(column.type, KNOWN_FIELDS[column.name].type):
            expected = KNOWN_FIELDS[column.name].type
            problems.append(problem(column=column.name, message=f"has type {column.type}, expected {expected}"))
            rows_readable = False
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            problems.append(problem(column=name, message="missing required column"))
            rows_readable = False
    return problems, rows_readable


def _closest_column(name: str) -> str | None:
    """The known column a misspelt name most likely means; same words in another order count first."""
    words = sorted(name.lower().split("_"))
    for known in KNOWN_FIELDS:
        if sorted(known.split("_")) == words:
            return known
    close = difflib.get_close_matches(name.lower(), KNOWN_FIELDS, n=1)
    return close[0] if close else None


def _read_table(path: str) -> pa.Table:
    if is_uri(path) and not path.lower().startswith("file://"):
        with open_location(path) as handle:
            return pq.read_table(handle)
    return pq.read_table(unquote(urlparse(path).path) if is_uri(path) else path)


def _manifest_base(path: str) -> ManifestBase:
    if is_uri(path) and not path.lower().startswith("file://"):
        return ManifestBase(None, path.rsplit("/", 1)[0])
    local = unquote(urlparse(path).path) if is_uri(path) else path
    folder = local if os.path.isdir(local) else os.path.dirname(os.path.abspath(local))
    return ManifestBase(os.path.abspath(folder), None)


def load_manifest(
    path: str | os.PathLike[str], *, allow_outside: bool = False, check_files: bool = True
) -> ManifestReport:
    """Validate a manifest in one pass: every bad row is reported, the good rows are returned."""
    display = os.fspath(path)

    def manifest_problem(column: str | None = None, message: str = "") -> Problem:
        return Problem(None, None, column, message, display)

    def unusable(message: str) -> ManifestReport:
        return ManifestReport(display, 0, [], [], [manifest_problem(message=message)], rows_checked=False)

    try:
        table = _read_table(display)
    except FileNotFoundError:
        return unusable("file not found")
    except (OSError, pa.ArrowException, ValueError, ImportError) as err:
        return unusable(f"not a readable Parquet file ({' '.join(str(err).split()) or type(err).__name__})")

    manifest_problems, rows_readable = _schema_problems(table.schema, manifest_problem)
    if table.num_rows == 0:
        manifest_problems.append(manifest_problem(message="the manifest has no rows"))
    if not rows_readable:
        return ManifestReport(display, table.num_rows, [], [], manifest_problems, rows_checked=False)

    records = table.select([n for n in table.schema.names if n in KNOWN_FIELDS]).to_pylist()
    base = _manifest_base(display)
    problems: list[Problem] = []
    locations: list[dict[str, str]] = []
    first_row_of: dict[str, int] = {}
    real_dirs: dict[str, str] = {}  # folder -> its real path, resolved once for every row
    resolved: dict[str, tuple[str | None, str | None]] = {}  # cell value -> (location, problem): rows share files
    for index, record in enumerate(records):
        pair_id = _usable_id(record)

        def row_problem(column: str, message: str, index: int = index, pair_id: Any = pair_id) -> None:
            problems.append(Problem(index, pair_id, column, message, display))

        for column, message in _value_problems(record):
            row_problem(column, message)
        if pair_id is not None:
            if pair_id in first_row_of:
                row_problem("pair_id", f"duplicate pair_id (first used in row {first_row_of[pair_id]})")
            else:
                first_row_of[pair_id] = index
        locations.append(_row_locations(record, base, allow_outside, real_dirs, resolved, row_problem))
        for column, message in _format_problems(record):
            row_problem(column, message)

    if check_files:
        _check_row_files(records, locations, problems, display)

    problems.sort(key=lambda p: (p.row, _column_order(p.column)))
    bad = {p.row for p in problems}
    good = [_pair_spec(i, records[i], locations[i]) for i in range(len(records)) if i not in bad]
    return ManifestReport(display, table.num_rows, good, problems, manifest_problems)


def _value_problems(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(column, problem) of a row's required cells that are missing or empty, and of its object words."""
    problems = []
    for column in REQUIRED_COLUMNS:
        value = record.get(column)
        if value is None:
            problems.append((column, "missing value (required)"))
        elif not value.strip():
            problems.append((column, "empty value (required)"))
    for column in ("source_object", "target_object"):  # "<v*>" as the object word: the concept's own slot
        value = record.get(column)
        problem = placeholder_problem(value) if isinstance(value, str) else None
        if problem is not None:
            problems.append((column, problem))
    return problems


def _row_locations(
    record: Mapping[str, Any],
    base: ManifestBase,
    allow_outside: bool,
    real_dirs: dict[str, str],
    resolved: dict[str, tuple[str | None, str | None]],
    row_problem: Callable[[str, str], None],
) -> dict[str, str]:
    """column -> the resolved location of each image and mask cell of a row (``resolved``: cell value ->
    (location, problem), shared by the rows); a cell that does not resolve is a problem of the row."""
    row_locations = {}
    for column in (*IMAGE_COLUMNS, *MASK_COLUMNS):
        value = record.get(column)
        if value is None:
            continue
        known = resolved.get(value)
        if known is None:
            known = resolved[value] = resolve_location(value, base, allow_outside, real_dirs)
        location, problem = known
        if problem is not None:
            if value.strip() or column not in REQUIRED_COLUMNS:  # blank required cells are reported above
                row_problem(column, problem)
        else:
            row_locations[column] = location
    return row_locations


def _format_problems(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(column, problem) of a row's tags (no nulls) and pattern_params (a JSON object of finite numbers)."""
    problems = []
    tags = record.get("tags")
    if tags is not None and any(tag is None for tag in tags):
        problems.append(("tags", "tags contain a null"))
    params = record.get("pattern_params")
    if params is not None:
        try:
            parsed = json.loads(params, parse_constant=_refuse_constant)
        except json.JSONDecodeError as err:
            problems.append(("pattern_params", f"not valid JSON ({err.msg} at char {err.pos})"))
        except ValueError as err:  # NaN / Infinity: Python's json takes them, JSON does not
            problems.append(("pattern_params", str(err)))
        else:
            if not isinstance(parsed, dict):
                problems.append(("pattern_params", f"expected a JSON object, got {type(parsed).__name__}"))
    return problems


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (a finite number is needed)")


def _usable_id(record: Mapping[str, Any]) -> str | None:
    pair_id = record.get("pair_id")
    return pair_id if isinstance(pair_id, str) and pair_id.strip() else None


def _column_order(column: str | None) -> int:
    names = list(KNOWN_FIELDS)
    return names.index(column) if column in KNOWN_FIELDS else len(names)


def _check_row_files(
    records: list[dict], locations: list[dict[str, str]], problems: list[Problem], display: str
) -> None:
    kind_of = {**dict.fromkeys(IMAGE_COLUMNS, "image"), **dict.fromkeys(MASK_COLUMNS, "mask")}
    checks = run_checks((kind_of[c], loc) for row in locations for c, loc in row.items())
    for index, (record, row_locations) in enumerate(zip(records, locations)):
        pair_id = _usable_id(record)
        sizes: dict[str, tuple[int, int]] = {}
        for column, location in row_locations.items():
            check = checks[(kind_of[column], location)]
            if check.problem is not None:
                problems.append(Problem(index, pair_id, column, file_problem(check, record[column]), display))
            else:
                sizes[column] = check.size
        for column, partner in SHAPE_PARTNER.items():
            if column in sizes and partner in sizes and not aspect_ratios_match(sizes[column], sizes[partner]):
                (w, h), (pw, ph) = sizes[column], sizes[partner]
                message = (
                    f"size {w}x{h} ({record[column]}) has a different aspect ratio than "
                    f"{partner} {pw}x{ph} ({record[partner]})"
                )
                problems.append(Problem(index, pair_id, column, message, display))


def _pair_spec(index: int, record: dict[str, Any], locations: dict[str, str]) -> PairSpec:
    def text(column: str) -> str | None:
        return record.get(column)

    return PairSpec(
        row=index,
        pair_id=record["pair_id"],
        category=record["category"],
        source_image=locations["source_image"],
        source_mask=locations.get("source_mask"),
        source_object=record["source_object"],
        target_image=locations["target_image"],
        target_mask=locations.get("target_mask"),
        target_object=record["target_object"],
        target_mask_gt=locations.get("target_mask_gt"),
        concept=text("concept"),
        tags=tuple(record.get("tags") or ()),
        expected_image=locations.get("expected_image"),
        source_part=text("source_part"),
        target_part=text("target_part"),
        pattern=text("pattern"),
        pattern_params=text("pattern_params"),
        raw=dict(record),
    )


# ---------------------------------------------------------------------------------------- writing


def write_manifest(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows (dicts keyed by column name) as a Parquet manifest.

    The :data:`MANIFEST_SCHEMA` columns are always written (missing keys as null); ground-truth columns
    only when some row has them. A key that is no manifest column, or a required value that is null,
    raises ValueError naming it.
    """
    present = {key for row in rows for key in row}
    unknown = sorted(present - set(KNOWN_FIELDS))
    if unknown:
        raise ValueError(f"not manifest column(s): {', '.join(unknown)}; known: {', '.join(KNOWN_FIELDS)}")
    for index, row in enumerate(rows):
        missing = [name for name in REQUIRED_COLUMNS if row.get(name) is None]
        if missing:
            raise ValueError(f"row {index}: required column(s) {', '.join(missing)} missing or null")
    extra = [f for f in GROUND_TRUTH_FIELDS if f.name in present]
    schema = pa.schema([*MANIFEST_SCHEMA, *extra], metadata=MANIFEST_SCHEMA.metadata)
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def validate_main(args: argparse.Namespace) -> int:
    """`clic-bench validate MANIFEST`: one line per problem, a summary; exit 0 ok, 1 bad rows, 2 unusable."""
    report = load_manifest(args.manifest, allow_outside=getattr(args, "allow_outside", False))
    for line in report.lines():
        print(line)
    print(report.summary())
    return report.exit_code()
