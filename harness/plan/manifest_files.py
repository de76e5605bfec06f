"""The file checks of a manifest's rows: each image's header and integrity, each mask decoded in full (emptiness
needs every pixel), on threads bounded by the memory the decodes hold, and kept in the run folder being planned by
the file's (path, size, mtime) (:mod:`harness.plan.file_facts`). Used by :mod:`harness.plan.manifest`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from clic.io import InputError, load_mask, probe_image

from . import file_facts
from .decode_budget import DECODES, decode_cost
from .locations import is_uri, open_location


@dataclass(frozen=True)
class FileCheck:
    size: tuple[int, int] | None  # (W, H) when readable
    problem: str | None


def check_file(kind: str, location: str) -> FileCheck:
    """Header + integrity for images, a full decode for masks (emptiness needs every pixel); the answer is kept
    in the run folder being planned, by the file's (path, size, mtime) (:mod:`harness.plan.file_facts`)."""
    key, known = file_facts.lookup(location, f"check:{kind}")
    if known is not None:
        return FileCheck(tuple(known), None)
    check = _check_file_now(kind, location)
    if check.problem is None and check.size is not None:  # a bad file is checked again (and said again) each time
        file_facts.remember(key, f"check:{kind}", list(check.size))
    return check


def _check_file_now(kind: str, location: str) -> FileCheck:
    try:
        if is_uri(location):
            with open_location(location) as handle:
                return _check_source(kind, handle, location)
        return _check_source(kind, location, location)
    except InputError as err:
        return FileCheck(None, err.problem)
    except FileNotFoundError:
        return FileCheck(None, "file not found")
    except (OSError, ImportError, ValueError) as err:
        return FileCheck(None, f"cannot open ({' '.join(str(err).split()) or type(err).__name__})")


def _decode_cost(kind: str, source: Any) -> int:
    """Bytes the check of one file holds while it runs, from its header (0 when the header is unreadable:
    the check itself then reports why). PNG and JPEG images are probed without a full decode."""
    try:
        with Image.open(source) as image:
            if kind == "image" and image.format in ("PNG", "JPEG", "MPO"):
                return 0
            return decode_cost(image.size[0], image.size[1], image.mode)
    except Exception:  # any header problem is the check's to report, with its own message
        return 0
    finally:
        if hasattr(source, "seek"):
            source.seek(0)


def _check_source(kind: str, source: Any, name: str) -> FileCheck:
    with DECODES.reserve(_decode_cost(kind, source)):  # bounded by memory, not by the thread count
        if kind == "mask":
            mask = load_mask(source, name=name)
            return FileCheck((mask.shape[1], mask.shape[0]), None)
        return FileCheck(probe_image(source, name=name), None)


def file_problem(check: FileCheck, raw: str) -> str:
    if check.problem == "file not found":
        return f"file not found: {raw}"
    return f"{check.problem}: {raw}"


def run_checks(wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], FileCheck]:
    """Check every (kind, location) once; threads overlap file and network I/O and PIL's decoding."""
    unique = list(dict.fromkeys(wanted))
    if not unique:
        return {}
    workers = min(32, 4 * (os.cpu_count() or 1), len(unique))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda item: check_file(*item), unique))
    return dict(zip(unique, results))
