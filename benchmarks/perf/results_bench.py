"""Reading a large run's results: per-job files (the journal) against the same rows compacted.

A 100k-row run is written as per-job files of ``rows_per_job`` rows (a job writes one row per metric value),
read with ``harness.store.read_results``, compacted with ``harness.store.compact_results`` and read again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def results_read(rows: int = 100_000, rows_per_job: int = 20) -> dict[str, Any]:
    from harness import store

    jobs = rows // rows_per_job
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        folder = store.results_dir(run)
        folder.mkdir(parents=True)
        template = {
            "run_id": "perf",
            "task": "transfer",
            "category": "furniture",
            "method": "clic",
            "preset": "paper",
            "label": "clic/paper",
            "seed": 0,
            "settings": "{}",
            "status": store.STATUS_OK,
            "metric_weights": "tiny-random",
            "finished_at": "2026-01-01T00:00:00",
        }
        for job in range(jobs):  # written directly (no fsync): this benchmark times reading, not writing
            job_id = f"job-{job:07d}"
            table = store.rows_to_table(
                [
                    {
                        **template,
                        "job_id": job_id,
                        "concept_id": f"c{job // 4}",
                        "pair_id": f"p{job % 500}",
                        "metric": f"m{index}",
                        "value": float(job + index),
                    }
                    for index in range(rows_per_job)
                ]
            )
            pq.write_table(table, folder / f"{job_id}.parquet")
        started = time.perf_counter()
        journal = store.read_results(run)
        journal_s = time.perf_counter() - started
        started = time.perf_counter()
        store.compact_results(run)
        compact_s = time.perf_counter() - started
        started = time.perf_counter()
        compacted = store.read_results(run)
        compacted_s = time.perf_counter() - started
        files = len(list(folder.glob("*.parquet")))
    assert len(journal) == len(compacted) == jobs * rows_per_job
    return {
        "rows": jobs * rows_per_job,
        "jobs": jobs,
        "journal_read_s": journal_s,
        "compact_s": compact_s,
        "compacted_read_s": compacted_s,
        "compacted_files": files,
        "pyarrow": pa.__version__,
    }
