"""The lock of a run folder on object storage: a **lease object** ``PREFIX/.lock`` (:mod:`harness.remote_folder`).

Created with a conditional write (S3 ``PUT`` with ``If-None-Match: *``, fsspec's ``pipe_file(mode="create")``): of
two drivers starting together exactly one creates it. A conditional write alone would leave a killed driver's lock
for ever (object stores have no process to release it as the kernel releases a ``flock``), so the holder rewrites it
every :data:`LEASE_SECONDS` / 3, and a lease not rewritten for :data:`LEASE_SECONDS` (by the store's own
``LastModified``) belongs to a dead driver. On S3 a waiting run takes it over with a PUT conditional on the dead
lease's ETag (``If-Match``), so of two runs that find it at the same moment exactly one gets it; the holder renews
on the same condition on its own ETag, so a holder that was taken for dead (paused for longer than the lease)
learns it at its next renewal (:attr:`Lease.lost`) instead of mirroring beside the new holder. Elsewhere the dead
lease is deleted and a new one created conditionally (two runs can both delete before either creates).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import UsageError

LEASE_FILE = ".lock"
LEASE_SECONDS = float(os.environ.get("CLIC_LEASE_SECONDS", "120"))


class Lease:
    """The lease object at ``path`` (on the filesystem ``fs``) of the run folder ``uri``."""

    def __init__(self, fs: Any, path: str, uri: str) -> None:
        self.fs, self.path, self.uri = fs, path, uri
        self.lost = False  # set when another run took the lease over while this one held it

    @contextmanager
    def held(self, run_id: str, *, wait: bool = True, quiet: bool = False) -> Iterator[None]:
        """Hold the lease for the ``with`` block (a conditional create, renewed; see the module docstring)."""
        body = json.dumps(
            {
                "run_id": run_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "lease_seconds": LEASE_SECONDS,
            }
        ).encode()
        tag = self._acquire(body, wait, quiet)
        self.lost = False
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(body, tag, stop), name=f"lease {self.uri}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                if not self.lost:  # a lease taken over is the other run's now
                    self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass

    def _acquire(self, body: bytes, wait: bool, quiet: bool) -> str | None:
        """Create the lease (or take a dead holder's over), waiting for a live holder unless ``wait`` is False;
        returns its ETag."""
        said = False
        while True:
            try:
                return self._write(self.path, body, create=True)  # S3: PUT with If-None-Match: *
            except FileExistsError:
                holder, age, dead_tag = self.holder(self.path)
                if age is not None and age > LEASE_SECONDS:  # not renewed: its driver died
                    took, tag = self.take_over(self.path, body, dead_tag)
                    if took:
                        return tag
                    continue
                if not wait:
                    raise UsageError(
                        f"{self.uri}: in use by {holder}; wait for it to finish, or choose another --out"
                    ) from None
                if not said and not quiet:
                    print(f"{self.uri}: in use by {holder}; waiting for it to finish", file=sys.stderr, flush=True)
                said = True
                time.sleep(min(5.0, LEASE_SECONDS / 6))

    def _renew(self, body: bytes, tag: str | None, stop: threading.Event) -> None:
        """Rewrite the lease every third of its life until ``stop``; on S3 only while it is still ours."""
        while not stop.wait(LEASE_SECONDS / 3):
            try:
                tag = self._write(self.path, body, if_match=tag)
            except OSError as error:
                if _precondition_failed(error):  # rewritten by another run: this one was taken for dead
                    self.lost = True
                    print(f"{self.path}: the lease was taken over by another run", file=sys.stderr)
                    return
                print(f"{self.path}: lease not renewed ({type(error).__name__})", file=sys.stderr)
            except Exception as error:  # one missed renewal is not fatal; the next try comes soon
                print(f"{self.path}: lease not renewed ({type(error).__name__})", file=sys.stderr)

    def _conditional_overwrite(self) -> bool:
        """Whether the store overwrites on a condition (S3's ``If-Match``: an ETag): takeover and renewal use it."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple | list) else (self.fs.protocol,)
        return "s3" in protocols

    def _write(self, lease: str, body: bytes, *, create: bool = False, if_match: str | None = None) -> str | None:
        """Write the lease object (``create``: only if absent; ``if_match``: only if its ETag is still that);
        returns its new ETag (None where the store gives none)."""
        conditions = {"IfMatch": if_match} if if_match and self._conditional_overwrite() else {}
        written = self.fs.pipe_file(lease, body, mode="create" if create else "overwrite", **conditions)
        return written.get("ETag") if isinstance(written, dict) else None

    def take_over(self, lease: str, body: bytes, dead_tag: str | None) -> tuple[bool, str | None]:
        """Replace a dead holder's lease: (taken, the new ETag). On S3 a PUT conditional on the dead lease's ETag,
        so of two runs that found it at the same moment exactly one takes it. Elsewhere the dead lease is deleted
        and the caller creates its own conditionally (two runs can both delete first: a race left open there)."""
        if dead_tag and self._conditional_overwrite():
            try:
                return True, self._write(lease, body, if_match=dead_tag)
            except OSError as error:  # 412: another run took it first; 404: it was released meanwhile
                if _precondition_failed(error) or isinstance(error, FileNotFoundError):
                    return False, None
                raise
        try:
            self.fs.rm_file(lease)
        except FileNotFoundError:
            pass
        return False, None

    def holder(self, lease: str) -> tuple[str, float | None, str | None]:
        """Who holds the lease, in words, seconds since it was last written (None: unknown) and its ETag."""
        self.fs.invalidate_cache(lease)
        info: dict = {}
        try:
            info = self.fs.info(lease)
            holder = json.loads(self.fs.cat_file(lease) or b"{}")
        except FileNotFoundError:
            return "another run", 0.0, None
        except ValueError:
            holder = {}
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
        age = None
        if hasattr(modified, "timestamp"):
            age = time.time() - modified.timestamp()
        text = (
            (
                f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                f"since {holder.get('since', '?')})"
            )
            if holder
            else "another run"
        )
        return text, age, info.get("ETag")


def _precondition_failed(error: OSError) -> bool:
    """s3fs's translation of a failed ``If-Match`` (HTTP 412): ``OSError(EINVAL)`` naming the precondition."""
    return error.errno == errno.EINVAL or "PreconditionFailed" in str(error)
