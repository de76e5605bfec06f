"""A resume with nothing to do, answered without building the job graph.

A job's id hashes its inputs, so the plan of a run is a function of the suite (with its ``--set`` values), the
code version, the models' weights, the resolution and the pairs with their files' bytes. :func:`plan_fingerprint`
hashes those inputs cheaply — the files by (absolute path, size, modification time), as ``RUN/file_facts.json``
keys them — and the run stores it in ``RUN/plan.parquet`` beside the plan's result ids. When the next run on the
folder computes the same fingerprint, its plan would be the same ids; if every one of them already has a result
that is not a machine's failure, there is nothing to run, and the run says so from a set comparison in Arrow
(:func:`finished_plan`) instead of building 100k jobs and two ids each.

Anything that cannot be fingerprinted this way (a pair whose file is a URI: its stat is itself a request, and an
object store's time stamps are not a content promise) gives no fingerprint, and the run plans in full as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .. import store
from ..plan import file_facts
from ..plan.jobs import ModelInfo, Pair, Plan, code_version
from .run_folder import INFRASTRUCTURE_PREFIX

_PAIR_FIELDS = tuple(field.name for field in dataclasses.fields(Pair))
_FILE_FIELDS = ("source_image", "source_mask", "target_image", "target_mask", "target_mask_gt", "expected_image")


def plan_fingerprint(
    suite_record: Mapping[str, Any], plan: Plan, models: Mapping[str, ModelInfo | None], pairs: Sequence[Pair]
) -> str | None:
    """sha256 of everything the plan's ids follow from, or None when a pair's file cannot be fingerprinted."""
    digest = hashlib.sha256()
    digest.update(
        store.canonical_json(
            {
                "suite": suite_record,
                "code": code_version(),
                "resolution": plan.resolution,
                "models": {name: dataclasses.asdict(info) if info else None for name, info in models.items()},
            }
        ).encode()
    )
    files: set[str] = set()
    for pair in pairs:
        values = [getattr(pair, name) for name in _PAIR_FIELDS]
        digest.update(("\x1f".join("" if value is None else str(value) for value in values) + "\x1e").encode())
        files.update(value for name, value in zip(_PAIR_FIELDS, values) if name in _FILE_FIELDS and value)
    for location in sorted(files):
        stat_key = file_facts.stat_key(location)
        if stat_key is None:  # a URI or a file gone since validation: plan in full
            return None
        digest.update(stat_key.encode() + b"\x1e")
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class FinishedPlan:
    jobs: int  # the plan's task jobs (its group values aside)
    failed: int  # of them, those whose result is a failure of their own (not the machine's)


def finished_plan(run_dir: str | Path, fingerprint: str | None) -> FinishedPlan | None:
    """The counts of the folder's stored plan when it has ``fingerprint`` and every one of its result ids (jobs
    and group values) has a result that is not an infrastructure failure; else None (the run plans in full)."""
    if fingerprint is None:
        return None
    stored = store.read_plan_table(run_dir)
    if stored is None or stored.fingerprint != fingerprint:
        return None
    tables = store.read_result_tables(run_dir, ["status", "error"])
    if not tables:
        return None
    rows = pa.concat_tables(tables, promote_options="permissive")
    failed = rows.filter(pc.equal(rows.column("status"), store.STATUS_FAILED))
    machine = failed.filter(pc.fill_null(pc.starts_with(failed.column("error"), INFRASTRUCTURE_PREFIX), False))
    finished = pc.unique(rows.column("job_id"))
    if len(machine):
        finished = pc.filter(finished, pc.invert(pc.is_in(finished, value_set=pc.unique(machine.column("job_id")))))
    ids = stored.table.column("result_id")
    if not pc.all(pc.is_in(ids, value_set=finished)).as_py():
        return None
    jobs = stored.table.filter(pc.equal(stored.table.column("kind"), store.PLAN_KIND_JOB)).column("result_id")
    failed_jobs = pc.sum(pc.is_in(jobs, value_set=pc.unique(failed.column("job_id")))).as_py() or 0
    return FinishedPlan(jobs=len(jobs), failed=int(failed_jobs))
