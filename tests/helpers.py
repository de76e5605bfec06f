"""Small inputs shared by the method tests (imported by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

import torch

from clic.learn import ConceptSource
import plugins  # noqa: F401,E402 - subprocess drivers that import the test modules see the test-only methods


def square_mask(top: int, left: int, size: int, side: int = 64) -> torch.Tensor:
    mask = torch.zeros(side, side)
    mask[top : top + size, left : left + size] = 1
    return mask


def random_source(seed: int, side: int = 64) -> ConceptSource:
    """A seeded random 'chair' image in [-1, 1] with a square concept mask."""
    generator = torch.Generator().manual_seed(seed)
    return ConceptSource(torch.rand(3, side, side, generator=generator) * 2 - 1, square_mask(8, 16, 32, side), "chair")


def last_json_line(stdout: str) -> dict:
    """The report a subprocess printed last; Ray's log monitor may print its own lines to stdout too."""
    import json

    return json.loads(next(line for line in reversed(stdout.strip().splitlines()) if line.startswith("{")))
