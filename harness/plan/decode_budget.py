"""A memory budget for decoding images in parallel: threads wait until their image fits.

`clic-bench validate` (and `run`, which shares the loader) checks files on a thread pool; each mask is
decoded in full (emptiness needs every pixel). Thirty-two 13000×13000 16-bit masks decoded at once would need
~11 GB, so a thread first reserves the bytes its decode will hold (from the image header: pixels × bytes per
pixel of its mode, plus the boolean mask) and waits while the total in use would pass the budget. An image
larger than the whole budget still runs, alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Bytes held per pixel while a mask of this mode is decoded and thresholded: PIL's buffer plus the bool mask.
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "RGB": 4,
    "RGBA": 4,
    "CMYK": 4,
    "YCbCr": 4,
    "I": 4,
    "F": 4,
}
DEFAULT_BUDGET_BYTES = int(os.environ.get("CLIC_DECODE_BUDGET_MB", "512")) * 2**20


def decode_cost(width: int, height: int, mode: str) -> int:
    """Bytes a full decode of a (width, height) image of ``mode`` holds, with its boolean mask."""
    return width * height * (_BYTES_PER_PIXEL.get(mode, 4) + 1)


class DecodeBudget:
    """Counts reserved bytes; :meth:`reserve` blocks until a reservation fits (or nothing else is held)."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget = budget_bytes
        self.in_use = 0
        self.peak = 0
        self._condition = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: self.in_use == 0 or self.in_use + nbytes <= self.budget)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            if nbytes >= TRIM_AFTER_BYTES:
                release_freed_memory()
            with self._condition:
                self.in_use -= nbytes
                self._condition.notify_all()


# glibc keeps what a thread freed in that thread's malloc arena (PIL's 16 MB image blocks fall below its
# adaptive mmap threshold), so without a trim each pool thread would keep its own largest decode resident and
# the budget would bound the work but not the memory.
TRIM_AFTER_BYTES = 64 * 2**20


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


DECODES = DecodeBudget()
