"""Compaction of per-job result files: same rows before and after, kills at every step lose nothing and
show nothing twice, a job run again replaces its compacted rows, a superseded group leaves compacted files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_store import _row

from harness import store


def write_jobs(run: Path, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        job_id = f"job-{index:04d}"
        store.write_job_results(
            run, job_id, [_row(job_id, value=index), _row(job_id, metric="psnr_outside", value=index + 0.5)]
        )


def rows(run: Path) -> pd.DataFrame:
    return store.read_results(run).sort_values(["job_id", "metric"]).reset_index(drop=True)


def test_compaction_keeps_every_row_in_row_group_sized_files(tmp_path: Path) -> None:
    write_jobs(tmp_path, 50)
    before = rows(tmp_path)
    assert store.compact_results(tmp_path, rows_per_file=40, min_files=10) == 50
    files = sorted(p.name for p in store.results_dir(tmp_path).iterdir())
    assert files == [f"compacted-00000{i}.parquet" for i in (1, 2, 3)]  # 100 rows in files of 40
    for name in files:
        metadata = pq.ParquetFile(store.results_dir(tmp_path) / name).metadata
        assert metadata.num_row_groups == 1 and metadata.num_rows <= 40
    pd.testing.assert_frame_equal(rows(tmp_path), before)
    assert store.job_statuses(tmp_path) == {f"job-{i:04d}": "ok" for i in range(50)}


def test_few_files_are_left_as_the_journal(tmp_path: Path) -> None:
    write_jobs(tmp_path, 3)
    assert store.compact_results(tmp_path, min_files=4) == 0
    assert len(list(store.results_dir(tmp_path).glob("job-*.parquet"))) == 3


def test_a_kill_between_compacting_and_deleting_shows_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jobs(tmp_path, 20)
    before = rows(tmp_path)

    def killed(path: Path) -> None:
        raise KeyboardInterrupt("killed before the journal was deleted")

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        store.compact_results(tmp_path, min_files=1)
    monkeypatch.undo()
    assert len(list(store.results_dir(tmp_path).glob("job-*.parquet"))) == 20  # the journal is still there
    assert len(list(store.results_dir(tmp_path).glob("compacted-*.parquet"))) == 1
    pd.testing.assert_frame_equal(rows(tmp_path), before)
    assert store.compact_results(tmp_path, min_files=1) == 20  # the next run finishes the job
    assert [p.name for p in store.results_dir(tmp_path).iterdir()] == ["compacted-000002.parquet"]
    pd.testing.assert_frame_equal(rows(tmp_path), before)


def test_a_kill_while_writing_a_compacted_file_leaves_only_a_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jobs(tmp_path, 20)
    before = rows(tmp_path)
    real_replace = os.replace

    def killed(source: object, target: object) -> None:
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(store.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.compact_results(tmp_path, min_files=1)
    monkeypatch.setattr(store.os, "replace", real_replace)
    assert not list(store.results_dir(tmp_path).glob("compacted-*.parquet"))
    pd.testing.assert_frame_equal(rows(tmp_path), before)
    assert store.remove_stale_temps(tmp_path, older_than=-1) == 1


def test_a_job_run_again_replaces_its_compacted_rows(tmp_path: Path) -> None:
    write_jobs(tmp_path, 10)
    store.write_job_results(
        tmp_path, "job-0003", [{**_row("job-0003", store.STATUS_FAILED, None, math.nan), "error": "boom"}]
    )
    store.compact_results(tmp_path, min_files=1)
    assert store.finished_job_ids(tmp_path, include_failed=False) == {f"job-{i:04d}" for i in range(10)} - {"job-0003"}
    write_jobs(tmp_path, 1, start=3)  # --retry-failed ran it again: its per-job file wins over the compacted row
    assert store.job_statuses(tmp_path)["job-0003"] == "ok"
    store.compact_results(tmp_path, min_files=1)
    compacted = sorted(store.results_dir(tmp_path).glob("compacted-*.parquet"))
    ids = [pq.read_table(path, columns=["job_id"]).column("job_id").to_pylist() for path in compacted]
    assert sum(job_ids.count("job-0003") for job_ids in ids) == 2  # in one file only, its two metric rows
    assert rows(tmp_path).set_index(["job_id", "metric"]).loc[("job-0003", "psnr_outside"), "value"] == 3.5


def test_a_superseded_group_is_removed_from_compacted_files(tmp_path: Path) -> None:
    write_jobs(tmp_path, 5)
    for group in ("group-seeds-a-old", "group-seeds-a-new"):
        store.write_job_results(tmp_path, group, [_row(group)])
    store.compact_results(tmp_path, min_files=1)
    assert store.remove_superseded_results(tmp_path, "group-seeds-a-", keep="group-seeds-a-new") == 1
    assert set(store.read_results(tmp_path)["job_id"]) == {*(f"job-{i:04d}" for i in range(5)), "group-seeds-a-new"}


def test_compaction_reads_the_per_job_files_in_bounded_batches(tmp_path, monkeypatch):
    """issue 25: a compaction reads at most COMPACT_FILES_PER_BATCH per-job files at once (its memory does not
    grow with the run), and every row ends up in the compacted files exactly once."""
    from harness import store

    monkeypatch.setattr(store, "COMPACT_FILES_PER_BATCH", 7)
    reads: list[int] = []
    real_read_many = store._read_many
    monkeypatch.setattr(
        store, "_read_many", lambda paths, *a, **k: reads.append(len(paths)) or real_read_many(paths, *a, **k)
    )
    for index in range(30):
        store.write_job_results(
            tmp_path,
            f"job-{index:03d}",
            [{"job_id": f"job-{index:03d}", "status": "ok", "metric": "m", "value": float(index)}],
        )
    assert store.compact_results(tmp_path, min_files=1) == 30
    assert reads and max(reads) <= 7
    assert not store._journal_files(tmp_path)
    results = store.read_results(tmp_path)
    assert sorted(results["job_id"]) == [f"job-{index:03d}" for index in range(30)]
    assert sorted(results["value"]) == [float(index) for index in range(30)]
