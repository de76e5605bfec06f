"""Content hashes, one copy for the project: the canonical JSON form of a value and sha256 of bytes, JSON or files.

The harness's ids (:mod:`harness.plan.jobs`, :mod:`harness.store`) and the tiny world's weight records
(:mod:`clic.world.train`) hash with these, so "the same content" means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

BLOCK_BYTES = 1 << 20  # files are hashed in 1 MiB blocks: memory stays flat whatever their size


def canonical_json(data: Any) -> str:
    """The one JSON form used for hashing (and for the harness's ``settings`` column): sorted keys, no spaces."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(data: Any) -> str:
    """sha256 of :func:`canonical_json` of ``data``: equal for equal content, whatever the key order."""
    return sha256_hex(canonical_json(data).encode())


def stream_sha256(handle: IO[bytes]) -> str:
    """sha256 of everything left in an open binary file, read in blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a local file's bytes."""
    with open(path, "rb") as handle:
        return stream_sha256(handle)
