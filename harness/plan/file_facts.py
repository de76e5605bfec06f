"""What planning learned about each input file, kept in the run folder so that a resume does not learn it again.

Validating a manifest opens every image and decodes every mask, and a job's id hashes its files' bytes: at
100k rows over a catalogue of files that is minutes of reading, repeated by every resume. Both results depend
only on the file's content, so they are kept in ``RUN/file_facts.json`` keyed by the file's (absolute path,
size, modification time in ns): a file that was edited, replaced or touched has a new key and is read again.
URIs (``s3://`` …) are not cached: their stat is itself a request.

A process plans one run folder at a time: :func:`use_run_folder` loads its facts (preflight, before the
manifest is read), :func:`save` writes what was added once the run folder exists (the run, after planning).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

FILE_FACTS = "file_facts.json"
_lock = threading.Lock()
_facts: dict[str, dict[str, Any]] = {}
_folder: str | None = None
_dirty = False


def stat_key(location: str) -> str | None:
    """``path|size|mtime_ns`` of a local file, or None (a URI, or a file that cannot be stat'ed)."""
    if "://" in location:
        return None
    try:
        stat = os.stat(location)
    except OSError:
        return None
    return f"{os.path.abspath(location)}|{stat.st_size}|{stat.st_mtime_ns}"


def use_run_folder(run_dir: str | os.PathLike[str]) -> None:
    """Load ``run_dir``'s facts (none when it has none or they are unreadable: they are only a cache)."""
    global _folder, _facts, _dirty
    folder = str(Path(run_dir).resolve())
    with _lock:
        if folder == _folder:
            return
        _folder, _dirty = folder, False
        try:
            loaded = json.loads((Path(folder) / FILE_FACTS).read_text())
            _facts = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _facts = {}


def lookup(location: str, what: str) -> tuple[str | None, Any]:
    """(key, the cached value of ``what`` or None) for a file; the key is None when it cannot be cached."""
    key = stat_key(location)
    if key is None or _folder is None:
        return key, None
    with _lock:
        return key, _facts.get(key, {}).get(what)


def remember(key: str | None, what: str, value: Any) -> None:
    global _dirty
    if key is None or _folder is None:
        return
    with _lock:
        _facts.setdefault(key, {})[what] = value
        _dirty = True


def save(run_dir: str | os.PathLike[str]) -> None:
    """Write the facts learned for ``run_dir`` (atomically; a failure only loses the cache)."""
    global _dirty
    from ..store import write_json_atomic

    with _lock:
        if not _dirty or _folder != str(Path(run_dir).resolve()) or not Path(_folder).is_dir():
            return
        try:
            write_json_atomic(Path(_folder) / FILE_FACTS, _facts)
        except OSError:
            return
        _dirty = False


def forget() -> None:
    """Stop caching (tests; a process that plans another folder calls :func:`use_run_folder` again)."""
    global _folder, _facts, _dirty
    with _lock:
        _folder, _facts, _dirty = None, {}, False
