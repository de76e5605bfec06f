"""A run folder shared by runs: one run at a time, infrastructure failures retried, damage found and redone.

* **Lock.** A run holds an exclusive ``flock`` on ``RUN/.lock`` (which records who holds it: pid, host, start
  time) from planning to its run.json. A second run on the same folder waits for it, saying so in one line,
  or with ``--no-wait`` exits with one line naming the holder. The lock is released by the kernel when its
  holder dies, so a killed run never leaves the folder locked.
* **Infrastructure errors are not verdicts.** A job that failed because the machine did (no space left on the
  device, a lost worker or node, out of memory: a CUDA OOM or Ray's memory monitor) is recorded with :data:`INFRASTRUCTURE_PREFIX` in its error, and the next
  run runs it again without ``--retry-failed``; only the job's own errors (a NaN loss, a bad input) stay failed.
* **Damage.** Before planning, :func:`audit` deletes result files that cannot be read (e.g. truncated by a
  full disk outside the atomic write) and the results of ok jobs whose image artifacts are gone, so those
  jobs run again; each is one line. A broken learned concept is found by the learn task
  (:func:`clic.cli_checks.concept_problem`) and relearned.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .. import store
from ..errors import UsageError

LOCK_FILE = ".lock"
INFRASTRUCTURE_PREFIX = "infrastructure error, runs again next time: "
_INFRASTRUCTURE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}
# Ray's errors for a worker, node or object lost (not for an exception raised by the job's own code).
_LOST_WORKER_ERRORS = (
    "WorkerCrashedError",
    "NodeDiedError",
    "ObjectLostError",
    "OwnerDiedError",
    "LocalRayletDiedError",
    "RaySystemError",
    "ObjectFetchTimedOutError",
    "OutOfMemoryError",
)  # Ray's OutOfMemoryError: its memory monitor killed the worker


def _holder_text(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another run"
    return (
        f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"since {holder.get('since', '?')})"
    )


@contextmanager
def locked(run_dir: str | Path, run_id: str, *, wait: bool = True, quiet: bool = False) -> Iterator[None]:
    """Hold the run folder's lock for the ``with`` block (see the module docstring)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_FILE
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(lock_path)
            if not wait:
                raise UsageError(
                    f"{run_dir}: in use by {holder}; wait for it to finish, or choose another --out"
                ) from None
            if not quiet:
                print(f"{run_dir}: in use by {holder}; waiting for it to finish", file=sys.stderr, flush=True)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(
            descriptor,
            json.dumps(
                {
                    "run_id": run_id,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ).encode(),
            0,
        )
        yield
    finally:
        try:
            os.ftruncate(descriptor, 0)
        except OSError:
            pass
        os.close(descriptor)  # releases the flock


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    """The error and what caused it (a Ray task error carries the task's own exception as ``cause``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = getattr(error, "cause", None) or error.__cause__


# torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class) and Ray's memory-monitor kill; the texts
# catch one that lost its type on the way (pickling) and the CPU allocator's RuntimeError.
_OUT_OF_MEMORY_TEXTS = ("CUDA out of memory", "DefaultCPUAllocator: can't allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory failure: a job that would fit with more memory (a GPU of its own) is retried."""
    for cause in _causes(error):
        if type(cause).__name__ == "OutOfMemoryError" and type(cause).__module__.startswith(("torch", "ray")):
            return True
        if any(text in str(cause) for text in _OUT_OF_MEMORY_TEXTS):
            return True
    return False


def is_infrastructure_error(error: BaseException) -> bool:
    """True for a failure of the machine rather than of the job: a full or failing disk, a lost worker, memory."""
    if is_out_of_memory(error):
        return True
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _INFRASTRUCTURE_ERRNOS:
            return True
        if type(error).__name__ in _LOST_WORKER_ERRORS and type(error).__module__.startswith("ray"):
            return True
        if "No space left on device" in str(error):  # an ENOSPC that lost its errno on the way (pickling)
            return True
        error = getattr(error, "cause", None) or error.__cause__
    return False


def infrastructure_failures(run_dir: str | Path) -> set[str]:
    """Ids of jobs whose newest recorded failure was the machine's (they run again without --retry-failed)."""
    failed: set[str] = set()
    for table in store.read_result_tables(run_dir, ["status", "error"]):
        table = table.filter(pc.equal(table.column("status"), store.STATUS_FAILED))  # few rows, filtered in Arrow
        for job_id, error in zip(*(table.column(c).to_pylist() for c in ("job_id", "error"))):
            if isinstance(error, str) and error.startswith(INFRASTRUCTURE_PREFIX):
                failed.add(job_id)
    return failed


def audit(run_dir: str | Path) -> list[str]:
    """Remove what a later run must redo; one line per finding (see the module docstring). Works on per-job
    and compacted result files alike: a compacted file loses only the rows of the jobs that must run again."""
    run_dir = Path(run_dir)
    lines = []
    for path, why in store.unreadable_results(run_dir):
        path.unlink(missing_ok=True)
        lines.append(f"{path}: unreadable result file ({why}): removed, its job(s) run again")
    missing: dict[str, str] = {}  # job id -> its first missing artifact
    for table in store.read_result_tables(run_dir, ["status", "artifact_image"]):
        table = table.filter(
            pc.and_(pc.equal(table.column("status"), store.STATUS_OK), pc.is_valid(table.column("artifact_image")))
        )
        # a job has one row per metric value, all naming the same artifact: each distinct one is looked at once
        artifacts = [a for a in pc.unique(table.column("artifact_image")).to_pylist() if a]
        gone = [artifact for artifact in artifacts if not (run_dir / artifact).is_file()]
        if not gone:
            continue
        table = table.filter(pc.is_in(table.column("artifact_image"), value_set=pa.array(gone, pa.string())))
        for job_id, artifact in zip(*(table.column(c).to_pylist() for c in ("job_id", "artifact_image"))):
            missing.setdefault(job_id, artifact)
    store.remove_job_results(run_dir, missing)
    lines += [
        f"{run_dir / artifact}: artifact of job {job_id} is missing: its results were removed, the job runs again"
        for job_id, artifact in sorted(missing.items())
    ]
    return lines


def _rows_outside_plan(run_dir: Path, planned: pa.Array, columns: list[str]) -> list[pa.Table]:
    """The result rows (``columns`` and job_id) of jobs not in ``planned``; the ids are read first, so the settings
    JSON is read only if some row is outside the plan."""
    others = []
    ids = store.read_result_tables(run_dir, [])
    if any(not pc.all(pc.is_in(table.column("job_id"), value_set=planned)).as_py() for table in ids if len(table)):
        for table in store.read_result_tables(run_dir, columns):
            outside = table.filter(pc.invert(pc.is_in(table.column("job_id"), value_set=planned)))
            if len(outside):
                others.append(outside)
    return others


def remove_superseded(
    run_dir: str | Path, jobs: Iterable[Any], weights: Mapping[str, str | None], code: str
) -> list[str]:
    """Delete the results of jobs that an edited manifest row replaced; one line per pair.

    A job's id hashes its inputs, so editing a row's target object, category or files gives the job a new id
    and it runs again; the old id's rows would stay in the folder and the report would average old and new.
    A result is superseded when a job of this run has the same place (pair, task, method, preset, seed,
    settings) on the same model weights and code version under another id: what differs is then the row.
    (Results of another code version or model stay, as results of another setting do.)
    """
    run_dir = Path(run_dir)
    jobs = list(jobs)
    planned = pa.array([job.job_id for job in jobs], pa.string())
    columns = ["pair_id", "task", "method", "preset", "seed", "settings", "weights_hash", "code_version"]
    # Only rows of jobs that are not in this plan can be superseded: at 100k jobs that is none on a plain resume,
    # so the plan's places (a settings JSON per job) are worked out only when some row is outside the plan.
    others = _rows_outside_plan(run_dir, planned, columns)
    superseded: dict[str, str] = {}  # job id -> pair id
    if others:
        records: dict[tuple[int, int, int], str] = {}  # the settings objects are shared: their JSON once each

        def settings_json(job: Any) -> str:
            key = (id(job.settings), id(job.match), id(job.learn))
            if key not in records:
                records[key] = store.canonical_json(job.settings_record())
            return records[key]

        current = {
            (
                job.pair_id,
                job.task,
                job.method,
                job.preset,
                job.seed,
                settings_json(job),
                weights.get(job.method),
                code,
            ): job.job_id
            for job in jobs
        }
        for table in others:
            for row in table.to_pylist():
                place = tuple(row[name] for name in columns)
                if place in current and current[place] != row["job_id"]:
                    superseded[row["job_id"]] = row["pair_id"]
    store.remove_job_results(run_dir, superseded)
    removed: dict[str, int] = {}
    for job_id, pair_id in superseded.items():
        shutil.rmtree(store.artifact_dir(run_dir, job_id), ignore_errors=True)
        removed[pair_id] = removed.get(pair_id, 0) + 1
    return [
        f"{run_dir}: pair {pair_id!r} changed in the manifest: results of {count} earlier job(s) replaced by this run"
        for pair_id, count in sorted(removed.items())
    ]
