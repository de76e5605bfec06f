"""Where a run keeps what it produced: results (Parquet, tidy), artifacts, learned concepts, run.json.

Layout of a run folder::

    run.json                      the run record (suite, resolved plan, versions, host, counts), rewritten atomically
    pairs.parquet                 the resolved pairs (manifest rows) of every run into this folder
    results/<job_id>.parquet      one file per finished job, one row per (job, metric value): the journal
    results/compacted-<n>.parquet the journal compacted as a run finishes: row-group-sized files, one row group each
    artifacts/<job_id>/           edited.png, attention.png, mask.png
    concepts/<concept_id>/        a learned concept folder (content-addressed cache)

Every file that marks something as done is written under a temporary name in the same folder and then
renamed (``os.replace``), so a killed run never leaves a half file that a later run reads as finished.

Compaction (:func:`compact_results`) keeps that guarantee: the per-job files stay the journal until their rows
are in a compacted file that has been renamed into place, and only then are they deleted. Readers take, for
each job id, the rows of its newest source (compacted files in sequence order, then per-job files), so a kill
between the two steps leaves the same rows twice on disk but once in every read, and a job run again later
(``--retry-failed``, a group that gained members) replaces what an older compacted file holds for it.

The atomic writes live in :mod:`harness.store_atomic`, run.json, plan.parquet and pairs.parquet in
:mod:`harness.store_run_files`, the result rows' schema in :mod:`harness.store_schema`; all are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .store_atomic import (  # noqa: F401 - re-exported
    STALE_TEMP_SECONDS,
    TEMP_PREFIX,
    fsync_file,
    publish_folder,
    remove_stale_temps,
    temp_sibling,
    write_bytes_atomic,
    write_json_atomic,
)
from .store_run_files import (  # noqa: F401
    PAIRS_FILE,
    PLAN_FILE,
    PLAN_KIND_GROUP,
    PLAN_KIND_JOB,
    RUN_RECORD,
    StoredPlan,
    UnreadableRunFile,
    read_pairs,
    read_plan,
    read_plan_table,
    read_run_record,
    write_pairs,
    write_plan,
    write_run_record,
)
from .store_schema import (  # noqa: F401 - re-exported
    CATEGORICAL_COLUMNS,
    ENCODED_RESULT_SCHEMA,
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    STATUS_FAILED,
    STATUS_NOT_APPLICABLE,
    STATUS_OK,
    canonical_json,
    conform_results,
    json_ready,
    results_frame,
    rows_to_table,
)

RESULTS_DIR = "results"
ARTIFACTS_DIR = "artifacts"
CONCEPTS_DIR = "concepts"
COMPACTED_PREFIX = "compacted-"  # results/compacted-000001.parquet: compacted journal, newer sequence wins
COMPACT_ROWS = 131_072  # rows per compacted file: one Parquet row group (pyarrow's default row group is 1 Mi rows)
COMPACT_MIN_FILES = 64  # fewer per-job files than this are read as fast as one file: left as they are
COMPACT_FILES_PER_BATCH = 8192  # per-job files read at once by a compaction (tens of MB of rows)
COMPACT_EVERY_JOBS = 5000  # a run compacts its per-job files every this many recorded jobs, not only at its end


def results_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_DIR


def artifact_dir(run_dir: str | Path, job_id: str) -> Path:
    return Path(run_dir) / ARTIFACTS_DIR / job_id


def concept_dir(run_dir: str | Path, concept_id: str) -> Path:
    return Path(run_dir) / CONCEPTS_DIR / concept_id


def concept_is_complete(folder: str | Path) -> bool:
    """A concept folder is complete once its concept.json exists (the folder is renamed into place whole)."""
    return (Path(folder) / "concept.json").is_file()


def write_job_results(run_dir: str | Path, job_id: str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write one job's rows to results/<job_id>.parquet atomically (temp file, fsync, rename)."""
    final = results_dir(run_dir) / f"{job_id}.parquet"
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(final)
    pq.write_table(rows_to_table(rows), temp)
    fsync_file(temp)
    os.replace(temp, final)
    return final


def _result_files(run_dir: str | Path) -> list[Path]:
    """Compacted files in sequence order, then the per-job files: later sources win for a job id."""
    folder = results_dir(run_dir)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.parquet") if not p.name.startswith(TEMP_PREFIX)]
    return sorted(files, key=lambda p: (not p.name.startswith(COMPACTED_PREFIX), p.name))


def unreadable_results(run_dir: str | Path) -> list[tuple[Path, str]]:
    """Result files that cannot be read as results, with why (the report names them: they are left out)."""
    bad = []
    for path in _result_files(run_dir):
        try:
            names = pq.read_schema(path).names
            pq.read_table(path, read_dictionary=_TEXT_COLUMNS)  # every page decoded: a truncated file fails
        except (OSError, pa.ArrowException) as err:
            bad.append((path, " ".join(str(err).split())[:160] or type(err).__name__))
            continue
        if not set(RESULT_COLUMNS) <= set(names):
            bad.append((path, "not a results file (columns missing)"))
    return bad


def generated_image_name(index: int) -> str:
    """Artifact file of a generation's ``index``-th image (the first keeps the name every task uses)."""
    return "edited.png" if index == 0 else f"edited-{index}.png"


def has_results(run_dir: str | Path) -> bool:
    """Whether the run folder holds any result file (per-job or compacted)."""
    return bool(_result_files(run_dir))


def _compacted_files(run_dir: str | Path) -> list[Path]:
    return [p for p in _result_files(run_dir) if p.name.startswith(COMPACTED_PREFIX)]


def _journal_files(run_dir: str | Path) -> list[Path]:
    return [p for p in _result_files(run_dir) if not p.name.startswith(COMPACTED_PREFIX)]


# Text columns are read dictionary-encoded and decoded in Arrow: most repeat over many rows (a settings JSON of
# ~1 KB on each of a 100k-job run's 800k rows), and decoding a dictionary is ~10x faster than reading plain pages.
_TEXT_COLUMNS = [field.name for field in RESULT_SCHEMA if pa.types.is_string(field.type)]


def _read_table(path: Path, columns: list[str] | None = None, encoded: Sequence[str] = ()) -> pa.Table | None:
    """``path``'s table (None if unreadable); the text columns named in ``encoded`` stay dictionaries."""
    try:
        table = pq.read_table(path, columns=columns, read_dictionary=_TEXT_COLUMNS)
        for index, field in enumerate(table.schema):
            if pa.types.is_dictionary(field.type) and field.name not in encoded:
                table = table.set_column(index, field.name, table.column(index).cast(field.type.value_type))
        return table
    except (OSError, pa.ArrowException):
        return None  # unreadable (e.g. truncated by a crash outside our atomic write): not finished


def _newest_rows(tables: list[pa.Table]) -> list[pa.Table]:
    """Each job id's rows from the last table that has it (tables in source order)."""
    kept: list[pa.Table] = []
    seen: pa.Array | None = None
    for table in reversed(tables):
        if "job_id" not in table.column_names:
            continue
        if seen is not None and len(seen):
            older = pc.is_in(table.column("job_id"), value_set=seen)
            if pc.any(older).as_py():  # filtering copies every column: only when some row is replaced
                table = table.filter(pc.invert(older))
        ids = pc.unique(table.column("job_id").combine_chunks())
        seen = ids if seen is None else pa.concat_arrays([seen, ids.cast(seen.type)])
        kept.append(table)
    return kept[::-1]


def _read_tables(run_dir: str | Path, columns: list[str] | None = None, encoded: Sequence[str] = ()) -> list[pa.Table]:
    if columns is not None and "job_id" not in columns:
        columns = ["job_id", *columns]
    tables = [table for table in _read_many(_result_files(run_dir), columns, encoded) if table is not None]
    return _newest_rows(tables)


def read_result_tables(run_dir: str | Path, columns: list[str]) -> list[pa.Table]:
    """``job_id`` + ``columns`` of each job's newest rows, one Arrow table per readable file (files without those
    columns are skipped): for scans that need a few columns of every result without building a DataFrame."""
    return _read_tables(run_dir, columns)


READ_THREADS = 16  # reading many small files waits on the file system (a shared one most): overlap the waits


def _read_many(
    paths: list[Path], columns: list[str] | None = None, encoded: Sequence[str] = ()
) -> list[pa.Table | None]:
    """Each path's table (None where unreadable), in the order of ``paths``."""
    if len(paths) < 2:
        return [_read_table(path, columns, encoded) for path in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        return list(pool.map(lambda path: _read_table(path, columns, encoded), paths))


def read_results(run_dir: str | Path) -> pd.DataFrame:
    """All result rows of a run as one DataFrame with the columns of ``RESULT_SCHEMA`` (possibly empty)."""
    return results_frame(_results_table(run_dir))


def _results_table(run_dir: str | Path) -> pa.Table:
    tables = [
        conform_results(t, encoded=True)
        for t in _read_tables(run_dir, encoded=CATEGORICAL_COLUMNS)
        if "job_id" in t.column_names
    ]
    return pa.concat_tables(tables) if tables else ENCODED_RESULT_SCHEMA.empty_table()


def read_plan_results(run_dir: str | Path) -> tuple[pd.DataFrame, int]:
    """The result rows of the folder's current plan (:func:`write_plan`), and the number of rows of earlier
    plans in the folder that were left out (an edited suite run into its own folder must not pool with them)."""
    table = _results_table(run_dir)
    path = Path(run_dir) / PLAN_FILE
    if not path.is_file():
        return results_frame(table), 0
    planned = pq.read_table(path, columns=["result_id"]).column("result_id")
    keep = pc.is_in(table.column("job_id"), value_set=planned.combine_chunks())  # in Arrow: no frame of every row
    return results_frame(table.filter(keep)), len(table) - pc.sum(keep).as_py() if len(table) else 0


def earlier_plan_note(rows: int) -> str:
    return f"{rows} result row(s) from an earlier plan of this folder are not in these tables" if rows else ""


def job_statuses(run_dir: str | Path) -> dict[str, str]:
    """Job id -> its status (ok, failed, not_applicable), for every job with a readable result file."""
    statuses: dict[str, str] = {}
    for table in _read_tables(run_dir, columns=["job_id", "status"]):  # a compacted table holds many jobs
        # a job has a row per metric value, all of one status mostly: its distinct statuses, found in Arrow
        distinct = table.select(["job_id", "status"]).group_by(["job_id", "status"], use_threads=False).aggregate([])
        for job_id, status in zip(distinct.column("job_id").to_pylist(), distinct.column("status").to_pylist()):
            if statuses.get(job_id) != STATUS_FAILED:  # one failed row makes the job failed
                statuses[job_id] = status
    return statuses


def finished_job_ids(run_dir: str | Path, include_failed: bool = True) -> set[str]:
    """Ids of jobs with a readable result file; ``include_failed=False`` leaves out failed ones (to retry)."""
    return {job_id for job_id, status in job_statuses(run_dir).items() if include_failed or status != STATUS_FAILED}


def remove_superseded_results(run_dir: str | Path, prefix: str, keep: str) -> int:
    """Delete the results whose job id starts with ``prefix``, except ``keep``'s: a group's values scored over
    an older membership (e.g. fewer seeds) are superseded by the current group's. Returns how many jobs'."""
    removed = 0
    for path in results_dir(run_dir).glob(f"{prefix}*.parquet"):
        if path.stem != keep:
            path.unlink(missing_ok=True)
            removed += 1
    for path in _compacted_files(run_dir):
        table = _read_table(path)
        if table is None:
            continue
        ids = table.column("job_id")
        stale = pc.and_(pc.starts_with(ids, prefix), pc.not_equal(ids, keep))
        if pc.any(stale).as_py():
            removed += len(pc.unique(ids.filter(stale)))
            _rewrite_or_remove(path, table.filter(pc.invert(stale)))
    return removed


def remove_job_results(run_dir: str | Path, job_ids: Iterable[str]) -> int:
    """Delete every result row of ``job_ids``, in their per-job files and in compacted files (which keep their
    other jobs' rows), so those jobs run again. Returns how many result files changed."""
    ids = set(job_ids)
    if not ids:
        return 0
    changed = 0
    for job_id in ids:
        path = results_dir(run_dir) / f"{job_id}.parquet"
        if path.is_file():
            path.unlink(missing_ok=True)
            changed += 1
    return changed + _drop_jobs(_compacted_files(run_dir), pa.array(sorted(ids), pa.string()))


def _drop_jobs(paths: Iterable[Path], job_ids: pa.Array) -> int:
    """Remove the rows of ``job_ids`` from the result files ``paths``; returns how many files changed."""
    changed = 0
    for path in paths:
        table = _read_table(path)
        if table is None:
            continue
        hit = pc.is_in(table.column("job_id"), value_set=job_ids)
        if pc.any(hit).as_py():
            _rewrite_or_remove(path, table.filter(pc.invert(hit)))
            changed += 1
    return changed


# ------------------------------------------------------------------------------------------- compaction


def _write_table_atomic(path: Path, table: pa.Table) -> None:
    temp = temp_sibling(path)
    pq.write_table(table, temp, row_group_size=max(len(table), 1))
    fsync_file(temp)
    os.replace(temp, path)


def _rewrite_or_remove(path: Path, table: pa.Table) -> None:
    if len(table):
        _write_table_atomic(path, table)
    else:
        path.unlink(missing_ok=True)


def compact_results(run_dir: str | Path, rows_per_file: int = COMPACT_ROWS, min_files: int = COMPACT_MIN_FILES) -> int:
    """Move the rows of the per-job files into compacted files of up to ``rows_per_file`` rows (one row group
    each) and then delete those per-job files; returns how many were compacted (0 below ``min_files``).

    Order, so that a kill at any point loses nothing and never shows a row twice to a reader: (1) new
    compacted files are written and renamed into place, (2) older compacted files drop the job ids the new
    ones hold (a job run again), (3) the per-job files are deleted, each only if unchanged since it was read.
    Not meant to run while jobs of the same run folder are still writing (the runner's driver, the only writer,
    calls it between its writes and at the end). The per-job files are read ``COMPACT_FILES_PER_BATCH`` at a
    time, so its memory does not grow with the run (each batch keeps the order above)."""
    journal = _journal_files(run_dir)
    if len(journal) < max(min_files, 1):
        return 0
    return sum(
        _compact_batch(run_dir, journal[start : start + COMPACT_FILES_PER_BATCH], rows_per_file)
        for start in range(0, len(journal), COMPACT_FILES_PER_BATCH)
    )


def _compact_batch(run_dir: str | Path, journal: list[Path], rows_per_file: int) -> int:
    stamps = [path.stat().st_mtime_ns for path in journal]  # before reading: a file changed since is kept
    read: list[tuple[Path, int, pa.Table]] = [
        (path, stamp, conform_results(table))
        for path, stamp, table in zip(journal, stamps, _read_many(journal))
        if table is not None and "job_id" in table.column_names
    ]
    if not read:
        return 0
    rows = pa.concat_tables(_newest_rows([table for _, _, table in read]))
    folder = results_dir(run_dir)
    older = _compacted_files(run_dir)
    sequence = max(
        (int(p.stem[len(COMPACTED_PREFIX) :]) for p in older if p.stem[len(COMPACTED_PREFIX) :].isdigit()), default=0
    )
    new_files = []
    for start in range(0, len(rows), rows_per_file):
        sequence += 1
        path = folder / f"{COMPACTED_PREFIX}{sequence:06d}.parquet"
        _write_table_atomic(path, rows.slice(start, rows_per_file))
        new_files.append(path)
    _drop_jobs(older, pc.unique(rows.column("job_id").combine_chunks()))  # jobs run again: the new files hold them
    for path, stamp, _ in read:
        try:
            if path.stat().st_mtime_ns == stamp:
                path.unlink()
        except FileNotFoundError:
            continue
    return len(read)
