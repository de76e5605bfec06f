"""Writing a run folder's files so that a killed writer never leaves a half file that a reader takes as finished:
everything is written under a temporary name (``.tmp-*``) in the same folder and renamed into place; what a killed
writer left is removed later by :func:`remove_stale_temps`. (Re-exported by :mod:`harness.store`.)
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"  # files and folders being written; readers skip them


def temp_sibling(path: Path) -> Path:
    """A unique temporary name in the same folder as ``path`` (same filesystem, so rename is atomic)."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex[:12]}")


STALE_TEMP_SECONDS = 3600.0  # a temporary file or folder untouched this long belongs to a killed writer


def remove_stale_temps(run_dir: str | Path, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Delete what killed workers or drivers left half-written (``.tmp-*`` untouched for ``older_than``
    seconds) anywhere under ``run_dir``; returns how many were removed. Fresh ones may be a live writer's."""
    removed = 0
    cutoff = time.time() - older_than
    for folder, subfolders, files in os.walk(run_dir):
        for name in [*subfolders, *files]:
            path = Path(folder) / name
            if not name.startswith(TEMP_PREFIX):
                continue
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:  # finished (renamed) or removed meanwhile
                continue
            removed += 1
        subfolders[:] = [name for name in subfolders if not name.startswith(TEMP_PREFIX)]
    return removed


def fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def publish_folder(temp_folder: Path, final_folder: Path) -> Path:
    """Rename a fully written folder into place; if another worker won the race, keep theirs."""
    final_folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(temp_folder, final_folder)
    except OSError:
        # The destination exists and is not empty: the same content id was learned concurrently.
        shutil.rmtree(temp_folder, ignore_errors=True)
    return final_folder
