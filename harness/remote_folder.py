"""Run folders on object storage (``--out s3://bucket/prefix``, ``gs://…``): a local staging folder, mirrored.

The harness reads and writes a run folder with local file operations (atomic renames, ``flock``, Parquet files
read by path), and object stores have no rename and no ``flock``. Rather than send every one of those through
a slower layer (local runs must not pay for it), a run into a URI works on a local **staging folder** and
mirrors it:

* **Before planning** (holding the lease below) the driver pulls the prefix into the staging folder: the
  results folder is made equal to the remote one (a result file that only the staging folder has belongs to a
  run that was killed before mirroring it: its job runs again, rather than risk showing rows that another
  driver has since replaced), every other file is downloaded when missing or of another size.
* **While it runs** the driver pushes what changed in the staging folder (results, run.json, plan.parquet,
  pairs.parquet, the file-facts cache) every :data:`PUSH_EVERY_SECONDS` and at the end; files it deleted
  (per-job files folded into a compacted file) are deleted remotely *after* the new files are uploaded, so a
  kill in between leaves a job's rows twice in the prefix, which readers already take once (the newest source
  wins: :mod:`harness.store`). A driver killed between two pushes loses only the rows of the jobs since the last
  push: they run again on resume, never twice in the tables.
* **Workers** (on any node) write a job's artifacts and a learned concept into their own staging folder, as
  locally, then upload them before they return (a concept's ``concept.json``, its completion marker, last);
  a task whose concept was learned on another node downloads it first.
* **The report** is written into the staging folder and pushed under ``PREFIX/report``.

The lock is a **lease object** ``PREFIX/.lock`` (:mod:`harness.remote_lease`): created with a conditional write,
renewed by its holder, taken over (on S3 conditionally on the dead lease's ETag) once not renewed for
``LEASE_SECONDS``. Verified on S3 — s3fs sends ``If-None-Match: *`` and ``If-Match`` — other schemes depend on
their package's ``mode="create"``.

fsspec rather than ``pyarrow.fs``: the manifest reader already opens URIs through fsspec (with its one-line
"install this package" for a missing scheme, :mod:`harness.plan.remote`), s3fs exposes S3's conditional write
(pyarrow's filesystems do not), and its ``put``/``get`` of many files run concurrently.
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from . import remote_lease, store
from .errors import UsageError
from .remote_lease import LEASE_FILE, Lease

PUSH_EVERY_SECONDS = float(os.environ.get("CLIC_PUSH_SECONDS", "10"))
STAGING_ENV = "CLIC_STAGING_DIR"  # where staging folders go (default ~/.cache/clic-bench/staging)
REPORT_DIR = "report"
# Files of the run folder the driver writes (pushed by it); artifacts and concepts are pushed by the workers.
DRIVER_FILES = (store.RUN_RECORD, store.PLAN_FILE, store.PAIRS_FILE)
DRIVER_FOLDERS = (store.RESULTS_DIR, REPORT_DIR)
LOCAL_ONLY = (".lock", "file_facts.json")  # never mirrored: the flock file; the facts cache names local paths


def is_remote(location: str | os.PathLike[str] | None) -> bool:
    """True for ``scheme://…`` other than ``file://`` (a run folder on object storage)."""
    from .plan.locations import is_uri

    text = str(location) if location is not None else ""
    return is_uri(text) and not text.lower().startswith("file://")


def check_remote_folder(uri: str, option: str = "--out") -> None:
    """One line when ``uri``'s scheme cannot be opened (its package missing, unknown to fsspec)."""
    from .plan.remote import missing_package

    scheme = uri.split("://", 1)[0].lower()
    problem = missing_package(scheme)
    if problem is not None:
        raise UsageError(f"{option}: {uri}: {problem}")
    if not uri.split("://", 1)[1].strip("/"):
        raise UsageError(f"{option}: {uri}: name a bucket and a prefix, e.g. {scheme}://bucket/runs/x")


def staging_dir(uri: str) -> Path:
    """The local staging folder of ``uri``: the same path on every node of a cluster (workers stage there too)."""
    root = os.environ.get(STAGING_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "clic-bench", "staging")
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in uri.split("://", 1)[1].rstrip("/"))[-60:]
    return Path(root) / f"{name}-{digest}"


def _filesystem(uri: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(uri.rstrip("/"))


def _skipped(relative: str) -> bool:
    parts = relative.split("/")
    return (
        relative in LOCAL_ONLY
        or any(part.startswith(store.TEMP_PREFIX) for part in parts)
        or any(part.startswith(".learning-") for part in parts)
    )


class RemoteFolder:
    """A run folder at ``uri`` and its local staging folder (see the module docstring)."""

    def __init__(self, uri: str, local: str | os.PathLike[str] | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = _filesystem(self.uri)
        self.local = Path(local) if local is not None else staging_dir(self.uri)
        self.pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) the remote has
        self.last_push = time.monotonic()
        self.lease = Lease(self.fs, self.remote_path(LEASE_FILE), self.uri)

    def remote_path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def _listing(self) -> dict[str, int]:
        """Relative path -> size of every object under the prefix (mirrored ones only)."""
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        listing = {}
        for path, info in found.items():
            relative = path[len(self.root) :].lstrip("/")
            if relative and info.get("type", "file") == "file" and not _skipped(relative):
                listing[relative] = int(info.get("size") or 0)
        return listing

    # ------------------------------------------------------------------------------------------ mirroring
    def pull(self, tables_only: bool = False) -> int:
        """Make the staging folder hold the prefix (see the module docstring); returns files downloaded.
        ``tables_only``: only what a report reads of every job (run.json, plan, pairs, results); the artifacts
        and concepts it shows are fetched as it reads them (:meth:`fetch_file`)."""
        self.fs.invalidate_cache()
        listing = self._listing()
        if tables_only:
            listing = {
                r: size for r, size in listing.items() if r in DRIVER_FILES or r.split("/")[0] == store.RESULTS_DIR
            }
        self.local.mkdir(parents=True, exist_ok=True)
        results = self.local / store.RESULTS_DIR
        if results.is_dir():  # the remote results are the truth: a result only staged here runs again
            for path in results.iterdir():
                if path.is_file() and f"{store.RESULTS_DIR}/{path.name}" not in listing:
                    path.unlink()
        for name in DRIVER_FILES:  # nor may an earlier prefix's run.json or plan come back
            if name not in listing:
                (self.local / name).unlink(missing_ok=True)
        wanted = []
        for relative, size in listing.items():
            local = self.local / relative
            if (
                relative.startswith(f"{store.RESULTS_DIR}/")
                or relative in DRIVER_FILES
                or not local.is_file()
                or local.stat().st_size != size
            ):
                wanted.append(relative)
        self._download(wanted)
        self.pushed = {}
        for relative in listing:
            local = self.local / relative
            if local.is_file():
                stat = local.stat()
                self.pushed[relative] = (stat.st_size, stat.st_mtime_ns)
        self.last_push = time.monotonic()
        return len(wanted)

    def fetch_file(self, relative: str) -> bool:
        """Download one file of the prefix into the staging folder (False: the prefix has no such file)."""
        if _skipped(relative) or relative.startswith("../"):
            return False
        try:
            self._download([relative])
        except FileNotFoundError:
            return False
        return True

    def fetch_run_record(self) -> str | None:
        """Download ``PREFIX/run.json`` (if any) into the staging folder, for the preflight's checks; the problem
        in one line when the prefix cannot be read (no such bucket, no credentials, no answer)."""
        try:
            self.fs.invalidate_cache()
            data = self.fs.cat_file(self.remote_path(store.RUN_RECORD))
        except FileNotFoundError:
            (self.local / store.RUN_RECORD).unlink(missing_ok=True)  # staged from an earlier prefix of that name
            return None if self._bucket_exists() else f"{self.uri}: no such bucket (create it first)"
        except Exception as error:  # credentials, endpoint, permissions: said, not a traceback
            return f"{self.uri}: cannot be read ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
        store.write_bytes_atomic(self.local / store.RUN_RECORD, data)
        return None

    def _bucket_exists(self) -> bool:
        try:
            return bool(self.fs.exists(self.root.split("/", 1)[0]))
        except Exception:  # unsure (permissions): not said to be missing
            return True

    def _download(self, relatives: list[str]) -> None:
        """Each file to a temporary name, then renamed: a download cut short is never read as the file."""
        if not relatives:
            return
        temps = []
        for relative in relatives:
            final = self.local / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            temps.append(store.temp_sibling(final))
        self.fs.get([self.remote_path(r) for r in relatives], [str(t) for t in temps])
        for relative, temp in zip(relatives, temps):
            os.replace(temp, self.local / relative)

    def _driver_files(self) -> dict[str, tuple[int, int]]:
        found = {}
        for name in DRIVER_FILES:
            path = self.local / name
            if path.is_file():
                stat = path.stat()
                found[name] = (stat.st_size, stat.st_mtime_ns)
        for folder in DRIVER_FOLDERS:
            base = self.local / folder
            for directory, subfolders, files in os.walk(base):
                subfolders[:] = [s for s in subfolders if not s.startswith(store.TEMP_PREFIX)]
                for name in files:
                    relative = Path(directory, name).relative_to(self.local).as_posix()
                    if not _skipped(relative):
                        stat = Path(directory, name).stat()
                        found[relative] = (stat.st_size, stat.st_mtime_ns)
        return found

    def push(self) -> int:
        """Upload what the driver changed, then delete what it removed (results, report); returns files sent.
        Nothing once the lease was taken over: the prefix is another run's now (:meth:`push_if_due` says so)."""
        if self.lease_lost:
            return 0
        current = self._driver_files()
        changed = sorted(r for r, stamp in current.items() if self.pushed.get(r) != stamp)
        if changed:
            self.fs.put([str(self.local / r) for r in changed], [self.remote_path(r) for r in changed])
            self.pushed.update({r: current[r] for r in changed})
        gone = sorted(r for r in self.pushed if r.split("/", 1)[0] in DRIVER_FOLDERS and r not in current)
        if gone:  # after the uploads: a kill in between leaves rows twice, which readers take once
            self.fs.rm([self.remote_path(r) for r in gone])
            for relative in gone:
                del self.pushed[relative]
        self.last_push = time.monotonic()
        return len(changed)

    def push_report(self, report: Path) -> None:
        """Upload a report written into the staging folder (the same place under the prefix)."""
        upload_folder(self.uri, self.local, report)

    def push_if_due(self) -> None:
        if self.lease_lost:  # another run holds the prefix now: mirroring would mix two runs
            raise UsageError(
                f"{self.uri}: another run took this run's lease (it was not renewed for {remote_lease.LEASE_SECONDS:.0f} s); "
                f"stopped: its results so far are in {self.local}"
            )
        if time.monotonic() - self.last_push >= PUSH_EVERY_SECONDS:
            self.push()

    # ---------------------------------------------------------------------------------------------- lease
    @property
    def lease_lost(self) -> bool:
        """Whether another run took over this run's lease (:class:`harness.remote_lease.Lease`)."""
        return self.lease.lost

    def leased(self, run_id: str, *, wait: bool = True, quiet: bool = False) -> AbstractContextManager[None]:
        """Hold ``PREFIX/.lock`` for the ``with`` block (:meth:`harness.remote_lease.Lease.held`)."""
        return self.lease.held(run_id, wait=wait, quiet=quiet)


# ------------------------------------------------------------------------------------------ worker side
def upload_folder(
    remote_uri: str, local_root: str | os.PathLike[str], folder: str | os.PathLike[str], last: str | None = None
) -> None:
    """Upload ``folder`` (inside ``local_root``) to the same place under ``remote_uri``; ``last`` (a file name of
    the folder, the completion marker) after every other file."""
    fs, root = _filesystem(remote_uri)
    folder, local_root = Path(folder), Path(local_root)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(store.TEMP_PREFIX))
    first = [p for p in files if p.name != last or p.parent != folder]
    final = [p for p in files if p not in first]
    for batch in (first, final):
        if batch:
            fs.put([str(p) for p in batch], [f"{root}/{p.relative_to(local_root).as_posix()}" for p in batch])


def fetch_concept(remote_uri: str, local_root: str | os.PathLike[str], final: Path) -> bool:
    """Download a concept learned on another node (complete remotely: its concept.json is there) into
    ``final``; False when the remote has no complete concept there."""
    fs, root = _filesystem(remote_uri)
    prefix = f"{root}/{final.relative_to(Path(local_root)).as_posix()}"
    fs.invalidate_cache(prefix)
    if not fs.exists(f"{prefix}/concept.json"):
        return False
    temp = store.temp_sibling(final)
    names = [path[len(prefix) :].lstrip("/") for path in fs.find(prefix)]
    for name in names:
        (temp / name).parent.mkdir(parents=True, exist_ok=True)
    fs.get([f"{prefix}/{name}" for name in names], [str(temp / name) for name in names])
    store.publish_folder(temp, final)
    return True


def generated_image_uris(remote_uri: str, job_id: str) -> list[str]:
    """A finished generate job's images under the prefix, in order (for a group metric scored on a node whose
    staging folder lacks them: the job ran on another node)."""
    fs, root = _filesystem(remote_uri)
    folder = f"{root}/{store.ARTIFACTS_DIR}/{job_id}"
    try:
        names = {path.rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return []
    uris = []
    while store.generated_image_name(len(uris)) in names:
        uris.append(f"{remote_uri.rstrip('/')}/{store.ARTIFACTS_DIR}/{job_id}/{store.generated_image_name(len(uris))}")
    return uris
