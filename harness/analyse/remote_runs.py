"""Reading a run folder on object storage (``s3://bucket/runs/x``) as the analyse commands read a local one.

`clic-bench report|compare|pack` read a run's tables in full and its images only for what they show (a bounded
sample), so a remote run is pulled in two parts (:mod:`harness.remote_folder`): its tables (run.json, plan,
pairs, results) into a local reading copy (:func:`reading_dir`) before reading, and each image when it is first read
(:func:`harness.analyse.images.fetched_on_read`), never the artifacts of every job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.analyse.images import fetched_on_read
from harness.errors import UsageError
from harness.remote_folder import RemoteFolder, check_remote_folder, is_remote, staging_dir
from harness.store import RUN_RECORD, has_results


def reading_dir(location: str) -> Path:
    """Where a run on object storage is staged to be read: beside, never inside, the staging folder a run into it
    uses on this machine (reading makes its results folder equal to the prefix's, which would delete the results
    a running run has not pushed yet)."""
    running = staging_dir(location)
    return running.with_name(f"{running.name}-read")


def staged_run(location: str, option: str = "RUN") -> RemoteFolder:
    """The remote run folder at ``location`` with its tables pulled into its reading copy (one line when the
    prefix cannot be read or holds no run)."""
    check_remote_folder(location, option)
    remote = RemoteFolder(location, reading_dir(location))
    problem = remote.fetch_run_record()
    if problem is not None:
        raise UsageError(problem)
    remote.pull(tables_only=True)
    if not (remote.local / RUN_RECORD).is_file() and not has_results(remote.local):
        raise UsageError(f"{location}: no such run folder (no run.json and no results under the prefix)")
    return remote


@contextmanager
def run_folder_to_read(location: str | Path, option: str = "RUN") -> Iterator[Path]:
    """A local folder holding the run at ``location``: the folder itself, or for a URI its reading copy, whose
    images are fetched as they are read inside the block."""
    if not is_remote(location):
        yield Path(location)
        return
    remote = staged_run(str(location), option)
    with fetched_on_read(remote.local, remote.fetch_file):
        yield remote.local
