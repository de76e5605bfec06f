"""What a plan's ids hash besides the settings: the bytes of the input files (cached, and prefetched on threads),
the code version (a hash of the output-determining sources) and, for people, ``git describe``; and the fast
canonical JSON of a plan's repeated settings dicts. (Re-exported by :mod:`harness.plan.jobs`.)
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import canonical_json

if TYPE_CHECKING:
    from .jobs import Pair

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Code whose change changes what a job computes. The orchestration (runner, store, report) does not, and
# hashing it would rerun every job after any report tweak; metric code is here because versions get forgotten.
OUTPUT_DETERMINING_SOURCES = ("clic", "harness/metrics")


_SPLICE = f"splice-{uuid.uuid4().hex}-"  # a placeholder no manifest or setting value contains


def spliced_json(data: Any, known: Mapping[int, tuple[Any, str]]) -> str:
    """``canonical_json(data)``, character for character, reusing ``known`` (id of a dict -> (the dict, its
    canonical JSON)) for the dicts it contains: a plan's ids hash the same resolved settings dicts for every pair,
    and writing them out again per job was most of a 100k-job plan. The known dicts are swapped for placeholder
    strings, the rest is written by one ``json.dumps``, and each placeholder is replaced by its dict's JSON."""
    parts: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            cached = known.get(id(value))
            if cached is not None and cached[0] is value:
                token = f"{_SPLICE}{len(parts)}"
                parts[f'"{token}"'] = cached[1]
                return token
            if all(isinstance(key, str) for key in value):
                return {key: swap(item) if isinstance(item, dict) else item for key, item in value.items()}
        return value

    text = canonical_json(swap(data))
    for token, written in parts.items():
        text = text.replace(token, written, 1)
    return text


@cache
def file_digest(path: str) -> str:
    """sha256 of a file's bytes (cached: a source image is shared by many jobs; and in the run folder being
    planned, by the file's path, size and mtime: :mod:`harness.plan.file_facts`)."""
    from . import file_facts

    key, known = file_facts.lookup(path, "sha256")
    if known is not None:
        return known
    from .locations import open_location  # a local path, or a URI (s3:// …) read through fsspec

    digest = hashlib.sha256()
    with open_location(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    file_facts.remember(key, "sha256", digest.hexdigest())
    return digest.hexdigest()


def prefetch_digests(pairs: Iterable[Pair]) -> None:
    """Hash every file of ``pairs`` not hashed yet, on threads (hashlib and file reads release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = {
        path
        for pair in pairs
        for path in (
            pair.source_image,
            pair.source_mask,
            pair.target_image,
            pair.target_mask,
            pair.target_mask_gt,
            pair.expected_image,
        )
        if path
    }
    if len(paths) > 1:
        with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
            list(pool.map(lambda path: _try_digest(str(path)), sorted(paths)))


def _try_digest(path: str) -> None:
    try:
        file_digest(path)
    except OSError:  # said by the graph builder, which hashes it again in order
        pass


def optional_digest(path: str | None) -> str | None:
    return file_digest(str(path)) if path else None


@lru_cache(maxsize=1)
def code_version() -> str:
    """``clic-harness <version>+<sha256 of the output-determining sources>``, computed once per process.

    A source hash rather than the git commit: a commit that touches only docs or the report must not
    rerun every job, and an uncommitted edit to a loss must.
    """
    try:
        base = package_version("clic-harness")
    except PackageNotFoundError:
        base = "0+unknown"
    digest = hashlib.sha256()
    for folder in OUTPUT_DETERMINING_SOURCES:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
            digest.update(path.read_bytes())
    return f"{base}+{digest.hexdigest()[:12]}"


@lru_cache(maxsize=1)
def git_describe() -> str | None:
    """The repository's ``git describe`` (recorded in run.json for people; ids use :func:`code_version`)."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
