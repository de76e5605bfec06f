"""The result rows' schema (one row per job and metric value) and their table and DataFrame forms.
Re-exported by :mod:`harness.store`, which reads and writes them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clic.hashing import canonical_json as clic_canonical_json

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_NOT_APPLICABLE = "not_applicable"

RESULT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("job_id", pa.string()),
        ("concept_id", pa.string()),
        ("task", pa.string()),
        ("pair_id", pa.string()),
        ("category", pa.string()),
        ("method", pa.string()),
        ("preset", pa.string()),
        ("label", pa.string()),  # "clic/paper no_att": method, preset and variant, decided at plan time
        ("variant", pa.string()),
        ("seed", pa.int64()),
        ("settings", pa.string()),  # JSON of every resolved value the job ran with: {task, "match", "learn"}
        ("sweep", pa.string()),  # JSON of the suite's own values for the job (what a sweep varies); null: none read
        ("t_start", pa.int64()),  # the resolved transfer values (a preset's own included), null where not read
        ("eta", pa.float64()),
        ("task_steps", pa.int64()),
        ("guidance_scale", pa.float64()),
        ("learn_steps", pa.int64()),  # the concept's resolved learning budget and learning rate
        ("learn_lr", pa.float64()),
        ("object_word", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("higher_is_better", pa.bool_()),  # the metric's declaration of this value's direction
        ("metric_version", pa.string()),
        ("metric_scale", pa.string()),
        ("metric_weights", pa.string()),
        ("model_id", pa.string()),
        ("weights_hash", pa.string()),
        ("weights_label", pa.string()),
        ("code_version", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("artifact_image", pa.string()),
        ("artifact_attention", pa.string()),
        ("artifact_mask", pa.string()),
        ("artifact_losses", pa.string()),
        ("learn_seconds", pa.float64()),
        ("task_seconds", pa.float64()),
        ("metric_seconds", pa.float64()),
        ("peak_memory_mb", pa.float64()),  # the job's peak: CUDA max allocated on a GPU, peak RSS on the CPU
        ("learn_peak_memory_mb", pa.float64()),  # the same for the job's concept learning (null: learned earlier)
        ("finished_at", pa.string()),
        (
            "notes",
            pa.string(),
        ),  # what happened on the way: an out-of-memory retry with a larger packing, a resumed learn
    ]
)
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
# Columns added later: result files written before them still read, with nulls there.


canonical_json = clic_canonical_json  # the one JSON form used for hashing and for the ``settings`` column


def json_ready(data: Any) -> Any:
    """``data`` with read-only mappings and tuples made plain dicts and lists (for run.json)."""
    return json.loads(canonical_json(data))


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) as a table with exactly ``RESULT_SCHEMA``; missing keys become null."""
    rows = list(rows)
    unknown = sorted({key for row in rows for key in row} - set(RESULT_COLUMNS))
    if unknown:
        raise ValueError(f"unknown result column(s): {', '.join(unknown)}")
    columns = {name: [row.get(name) for row in rows] for name in RESULT_COLUMNS}
    return pa.Table.from_pydict(columns, schema=RESULT_SCHEMA)


def conform_results(table: pa.Table, encoded: bool = False) -> pa.Table:
    """A result table with exactly ``RESULT_SCHEMA`` (``encoded``: :data:`ENCODED_RESULT_SCHEMA`, its repeating
    columns as dictionaries): columns added since it was written are null in it."""
    schema = ENCODED_RESULT_SCHEMA if encoded else RESULT_SCHEMA
    for name in RESULT_COLUMNS:
        if name not in table.column_names:
            column_type = schema.field(name).type
            table = table.append_column(pa.field(name, column_type), pa.nulls(len(table), column_type))
    return table.select(list(RESULT_COLUMNS)).cast(schema)


# Columns whose value repeats over many rows: one JSON per method run and sweep point. In pandas they are
# categoricals (codes, not a copy of the text per row: ~1 KB of JSON on each of a 100k-job run's 800k rows was most
# of its report's memory and time); their categories are in text order, so sorting by them sorts as the text does.
CATEGORICAL_COLUMNS = ("settings",)
# The schema as the report reads it: those columns dictionary-encoded from the file on (never a string per row).
ENCODED_RESULT_SCHEMA = pa.schema(
    [
        pa.field(field.name, pa.dictionary(pa.int32(), field.type)) if field.name in CATEGORICAL_COLUMNS else field
        for field in RESULT_SCHEMA
    ]
)


def results_frame(table: pa.Table) -> pd.DataFrame:
    """A result table as a DataFrame, the repeating JSON columns as ordered categoricals."""
    for name in CATEGORICAL_COLUMNS:
        index = table.schema.get_field_index(name)
        if index >= 0 and not pa.types.is_dictionary(table.schema.field(index).type):
            table = table.set_column(index, name, pc.dictionary_encode(table.column(name)))
    frame = table.to_pandas()
    for name in CATEGORICAL_COLUMNS:
        if name in frame.columns and isinstance(frame[name].dtype, pd.CategoricalDtype):
            column = frame[name].cat
            frame[name] = column.reorder_categories(sorted(column.categories), ordered=True)
    return frame
