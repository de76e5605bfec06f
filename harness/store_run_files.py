"""The run folder's small files beside its results: run.json (the run record), plan.parquet (the result ids of the
folder's current plan and the fingerprint of its inputs) and pairs.parquet (the resolved manifest rows). Each is
written atomically (:mod:`harness.store_atomic`). (Re-exported by :mod:`harness.store`.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import UsageError
from .store_atomic import fsync_file, temp_sibling, write_json_atomic

RUN_RECORD = "run.json"
PLAN_FILE = "plan.parquet"  # the result ids (jobs and group values) of the folder's current plan
PAIRS_FILE = "pairs.parquet"  # the resolved manifest rows the run's jobs came from (absolute paths or URIs)


class UnreadableRunFile(UsageError, ValueError):
    """run.json or pairs.parquet of a run folder cannot be read (edited or damaged outside the harness, which
    writes both atomically): one line naming the file."""


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableRunFile(
            f"{path}: not readable JSON ({' '.join(str(err).split())}); the next run into this folder writes it again"
        ) from None
    if not isinstance(manifest, dict):
        raise UnreadableRunFile(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def write_run_record(run_dir: str | Path, manifest: Mapping[str, Any]) -> Path:
    return write_json_atomic(Path(run_dir) / RUN_RECORD, dict(manifest))


PLAN_KIND_JOB = "job"
PLAN_KIND_GROUP = "group"
_PLAN_FINGERPRINT = b"plan_fingerprint"


@dataclass(frozen=True)
class StoredPlan:
    table: pa.Table  # result_id, kind (job / group)
    fingerprint: str | None  # harness.execute.resume.plan_fingerprint of the inputs it was planned from


def write_plan(
    run_dir: str | Path, job_ids: Iterable[str], group_ids: Iterable[str] = (), fingerprint: str | None = None
) -> Path:
    """Record the result ids of the folder's current plan (every job and every group's values), replacing the
    last plan's: tables read these rows, and rows of earlier plans in the folder are left out by name. The
    ``fingerprint`` of the plan's inputs lets a resume with nothing to do skip planning
    (:mod:`harness.execute.resume`)."""
    path = Path(run_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    jobs, groups = sorted(set(job_ids)), sorted(set(group_ids))
    table = pa.table(
        {
            "result_id": pa.array(jobs + groups, pa.string()),
            "kind": pa.array([PLAN_KIND_JOB] * len(jobs) + [PLAN_KIND_GROUP] * len(groups), pa.string()),
        }
    )
    if fingerprint:
        table = table.replace_schema_metadata({_PLAN_FINGERPRINT: fingerprint.encode()})
    temp = temp_sibling(path)
    pq.write_table(table, temp)
    fsync_file(temp)
    os.replace(temp, path)
    return path


def read_plan_table(run_dir: str | Path) -> StoredPlan | None:
    """The stored plan with its fingerprint; None when there is none or it cannot be read (only a cache then)."""
    path = Path(run_dir) / PLAN_FILE
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None
    if "kind" not in table.column_names:  # written before plans recorded kinds
        return None
    fingerprint = (table.schema.metadata or {}).get(_PLAN_FINGERPRINT)
    return StoredPlan(table, fingerprint.decode() if fingerprint else None)


def read_plan(run_dir: str | Path) -> set[str] | None:
    """The result ids :func:`write_plan` recorded; None for a folder written before plans were recorded."""
    path = Path(run_dir) / PLAN_FILE
    return set(pq.read_table(path, columns=["result_id"]).column("result_id").to_pylist()) if path.is_file() else None


def write_pairs(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Record the run's resolved pairs (one row per pair id; rows of earlier runs into the folder are kept,
    a pair id seen again takes its new row), so the report never has to find the manifest again."""
    path = Path(run_dir) / PAIRS_FILE
    try:
        earlier = read_pairs(run_dir)
    except UnreadableRunFile:  # damaged outside the harness: this run's pairs replace it
        earlier = []
    merged = {row["pair_id"]: dict(row) for row in earlier}
    merged.update({row["pair_id"]: dict(row) for row in rows})
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    pq.write_table(pa.Table.from_pylist(list(merged.values())), temp)
    fsync_file(temp)
    os.replace(temp, path)
    return path


def read_pairs(run_dir: str | Path, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The rows :func:`write_pairs` recorded ([] for a run folder without them); ``only``: those pair ids'."""
    path = Path(run_dir) / PAIRS_FILE
    if not path.is_file():
        return []
    try:
        table = pq.read_table(path)
        if only is not None:
            table = table.filter(pc.is_in(table.column("pair_id"), value_set=pa.array(list(only), pa.string())))
        return table.to_pylist()
    except (OSError, pa.ArrowException) as err:
        raise UnreadableRunFile(
            f"{path}: not a readable Parquet file ({' '.join(str(err).split())[:200]}); the next "
            f"run into this folder writes it again"
        ) from None
