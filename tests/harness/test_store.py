"""The result store: atomic per-job files, the tidy schema, and which jobs count as finished."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from harness import store


def _row(job_id: str, status: str = store.STATUS_OK, metric: str | None = "ssim_outside", value: float = 0.5) -> dict:
    return {
        "run_id": "r",
        "job_id": job_id,
        "concept_id": "c",
        "task": "transfer",
        "pair_id": "p0",
        "category": "furniture",
        "method": "cut_paste",
        "preset": "default",
        "seed": 0,
        "settings": "{}",
        "t_start": 10,
        "eta": 1.0,
        "object_word": "chair",
        "metric": metric,
        "value": value,
        "status": status,
        "finished_at": "2025-01-01T00:00:00",
    }


def test_read_results_has_exactly_the_schema_columns(tmp_path: Path) -> None:
    store.write_job_results(tmp_path, "job-a", [_row("job-a"), _row("job-a", metric="psnr_outside", value=30.0)])
    frame = store.read_results(tmp_path)
    assert tuple(frame.columns) == store.RESULT_COLUMNS
    assert len(frame) == 2
    assert frame["seed"].dtype.name in ("int64", "Int64")
    assert frame["artifact_image"].isna().all()


def test_empty_run_reads_as_empty_frame_with_columns(tmp_path: Path) -> None:
    frame = store.read_results(tmp_path)
    assert frame.empty and tuple(frame.columns) == store.RESULT_COLUMNS


def test_half_written_temp_and_corrupt_files_are_ignored(tmp_path: Path) -> None:
    store.write_job_results(tmp_path, "job-a", [_row("job-a")])
    good = store.results_dir(tmp_path) / "job-a.parquet"
    # A run killed mid-write leaves its temp file; a copy truncated by something else is unreadable.
    half = good.read_bytes()[: len(good.read_bytes()) // 2]
    store.temp_sibling(store.results_dir(tmp_path) / "job-b.parquet").write_bytes(good.read_bytes())
    (store.results_dir(tmp_path) / "job-c.parquet").write_bytes(half)
    frame = store.read_results(tmp_path)
    assert set(frame["job_id"]) == {"job-a"}
    assert store.finished_job_ids(tmp_path) == {"job-a"}


def test_write_leaves_no_temp_files(tmp_path: Path) -> None:
    store.write_job_results(tmp_path, "job-a", [_row("job-a")])
    assert [p.name for p in store.results_dir(tmp_path).iterdir()] == ["job-a.parquet"]
    assert pq.read_schema(store.results_dir(tmp_path) / "job-a.parquet").names == list(store.RESULT_COLUMNS)


def test_finished_job_ids_and_retry_of_failed(tmp_path: Path) -> None:
    store.write_job_results(tmp_path, "ok", [_row("ok")])
    store.write_job_results(tmp_path, "bad", [{**_row("bad", store.STATUS_FAILED, None, math.nan), "error": "boom"}])
    store.write_job_results(tmp_path, "na", [_row("na", store.STATUS_NOT_APPLICABLE, None, math.nan)])
    assert store.finished_job_ids(tmp_path) == {"ok", "bad", "na"}
    assert store.finished_job_ids(tmp_path, include_failed=False) == {"ok", "na"}
    failed = store.read_results(tmp_path).set_index("job_id").loc["bad"]
    assert pd.isna(failed["metric"]) and math.isnan(failed["value"]) and failed["error"] == "boom"


def test_unknown_column_is_rejected(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown result column"):
        store.write_job_results(tmp_path, "x", [{**_row("x"), "colour": "red"}])


def test_json_and_folder_publish_are_atomic(tmp_path: Path) -> None:
    store.write_run_record(tmp_path, {"counts": {"done": 1}})
    assert store.read_run_record(tmp_path)["counts"]["done"] == 1
    temp = tmp_path / ".tmp-concept"
    temp.mkdir()
    (temp / "concept.json").write_text("{}")
    final = store.publish_folder(temp, store.concept_dir(tmp_path, "abc"))
    assert store.concept_is_complete(final) and not temp.exists()
    # A second publisher of the same content id keeps the first folder and drops its own.
    other = tmp_path / ".tmp-other"
    other.mkdir()
    (other / "concept.json").write_text('{"second": true}')
    store.publish_folder(other, final)
    assert (final / "concept.json").read_text() == "{}" and not other.exists()


def test_stale_temps_of_killed_writers_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    import os
    import time

    results = tmp_path / store.RESULTS_DIR
    results.mkdir()
    stale_file = results / f"{store.TEMP_PREFIX}job.parquet-0123"
    stale_file.write_bytes(b"half")
    stale_folder = tmp_path / store.CONCEPTS_DIR / f"{store.TEMP_PREFIX}concept-4567"
    (stale_folder / "inner").mkdir(parents=True)
    (stale_folder / "inner" / "tokens.safetensors").write_bytes(b"half")
    fresh = results / f"{store.TEMP_PREFIX}other.parquet-89ab"
    fresh.write_bytes(b"being written")
    kept = results / "done.parquet"
    kept.write_bytes(b"finished")
    old = time.time() - 2 * store.STALE_TEMP_SECONDS
    for path in (stale_file, stale_folder):
        os.utime(path, (old, old))

    assert store.remove_stale_temps(tmp_path) == 2
    assert not stale_file.exists() and not stale_folder.exists()
    assert fresh.exists() and kept.exists()
    assert store.remove_stale_temps(tmp_path) == 0


def test_text_columns_read_as_text_and_settings_as_its_ordered_categories(tmp_path: Path) -> None:
    # the reader decodes dictionaries in Arrow; only the settings JSON stays encoded (a categorical in pandas)
    store.write_job_results(tmp_path, "job-b", [{**_row("job-b"), "settings": '{"b":1}'}])
    store.write_job_results(tmp_path, "job-a", [{**_row("job-a"), "settings": '{"a":1}'}])
    for table in store.read_result_tables(tmp_path, ["settings", "status"]):
        assert (
            str(table.schema.field("settings").type) == "string" and str(table.schema.field("status").type) == "string"
        )
    frame = store.read_results(tmp_path)
    assert list(frame["settings"].cat.categories) == ['{"a":1}', '{"b":1}'] and frame["settings"].cat.ordered
    assert dict(zip(frame["job_id"], frame["settings"].astype(str))) == {"job-a": '{"a":1}', "job-b": '{"b":1}'}
    assert frame["status"].tolist() == ["ok", "ok"] and not isinstance(frame["status"].dtype, pd.CategoricalDtype)
