"""The report's image files: collision-free thumbnail names and the thumbnails themselves (with a mask's outline).
Used by the report, its image grids and the compare page; below all three in the import graph."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

THUMBNAIL_PIXELS = 160
OUTLINE_COLOUR = (255, 40, 40)


def file_slug(text: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


SLUG_CHARACTERS = 60  # file names stay far below the file systems' 255 bytes


def image_name(key: object, role: str) -> str:
    """The thumbnail file name of a pair or job id: its slug, plus a hash of the id wherever the slug is not the
    id itself (so "chair 1" and "chair-1" never share a file), is cut short (a 3000-character id) or has capitals
    ("Chair1" and "chair1" are one file name on macOS' and Windows' case-insensitive file systems)."""
    text = str(key)
    slug = file_slug(text)
    if slug != text or len(slug) > SLUG_CHARACTERS or slug != slug.lower():
        slug = f"{slug[:SLUG_CHARACTERS]}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:10]}"
    return f"{slug}-{role}.png"


# Run folders whose files are fetched when first read: a report of a run on object storage downloads the results,
# not the artifacts of 100k jobs, and only the images it shows (root -> fetch(relative path) -> found).
_FETCHERS: dict[Path, Callable[[str], bool]] = {}


@contextmanager
def fetched_on_read(root: Path, fetch: Callable[[str], bool]) -> Iterator[None]:
    """Within the block, a file under ``root`` that :func:`local_file` does not find is fetched first."""
    _FETCHERS[Path(root)] = fetch
    try:
        yield
    finally:
        _FETCHERS.pop(Path(root), None)


def local_file(path: Path) -> Path:
    """``path``, fetched first when it is missing under a root of :func:`fetched_on_read` (else as it is)."""
    path = Path(path)
    if _FETCHERS and not path.is_file():
        for root, fetch in list(_FETCHERS.items()):
            if path.is_relative_to(root):
                fetch(path.relative_to(root).as_posix())
                break
    return path


def thumbnail(source: Path, dest: Path, mask: Path | None = None, pixels: int = THUMBNAIL_PIXELS) -> bool:
    """Save a copy of `source` at most `pixels` wide at `dest`, with the outline of `mask` in red when given."""
    source, mask = local_file(source), (local_file(mask) if mask is not None else None)
    try:
        with Image.open(source) as opened:
            image = opened.convert("RGB")
        image.thumbnail((pixels, pixels))
        if mask is not None and mask.is_file():
            with Image.open(mask) as opened:
                binary = opened.convert("L").resize(image.size, Image.NEAREST).point(lambda v: 255 if v > 127 else 0)
            inside = np.asarray(binary) > 0
            eroded = np.asarray(binary.filter(ImageFilter.MinFilter(3))) > 0
            pixels = np.asarray(image).copy()
            pixels[inside & ~eroded] = OUTLINE_COLOUR
            image = Image.fromarray(pixels)
        image.save(dest, compress_level=1)  # fast: thumbnails are small, size barely matters
    except (OSError, ValueError):  # a missing or unreadable artifact leaves an empty cell, not a crash
        return False
    return True
