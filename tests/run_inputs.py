"""Inputs for the harness and system tests: PIL-drawn pairs and small suites over the shipped manifest.

Imported by name (tests/ is on sys.path: the root conftest's folder); subprocess drivers that import the test
modules get the test-only methods registered through :mod:`plugins`."""

from __future__ import annotations

from pathlib import Path

import plugins  # noqa: F401 - registers the test-only methods (and puts tests/ on PYTHONPATH for workers)
from PIL import Image, ImageDraw

from harness.plan.jobs import Pair
from harness.plan.suite import Suite, suite_from_dict

SIZE = 64


def _draw(folder: Path, name: str, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> tuple[str, str]:
    image = Image.new("RGB", (SIZE, SIZE), (200, 200, 200))
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    image.save(folder / f"{name}.png")
    mask.save(folder / f"{name}_mask.png")
    return str(folder / f"{name}.png"), str(folder / f"{name}_mask.png")


def make_pairs(folder: Path, count: int, targets_per_source: int = 1) -> list[Pair]:
    """PIL-drawn pairs: ``count`` sources, each with ``targets_per_source`` targets."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        source, source_mask = _draw(folder, f"s{i}", (40 * i % 255, 80, 160), (8 + i % 8, 10, 40, 44))
        for j in range(targets_per_source):
            target, target_mask = _draw(folder, f"t{i}_{j}", (90, 30 * j % 255, 30), (20, 16 + j % 10, 52, 50))
            pairs.append(
                Pair(
                    f"p{i}_{j}",
                    "furniture",
                    source,
                    source_mask,
                    "chair",
                    target,
                    target_mask,
                    "chair",
                    target_mask_gt=target_mask,
                )
            )
    return pairs


# The runner takes its pairs from the tests; the suite still names a real manifest, as a suite must.
SHIPPED_MANIFEST = str(Path(__file__).resolve().parent.parent / "manifests" / "furniture" / "manifest.parquet")


def make_suite(data: dict) -> Suite:
    return suite_from_dict({"manifests": [SHIPPED_MANIFEST], **data}, source="test-suite", base_dir=Path.cwd())


def cut_paste_suite(**changes) -> Suite:
    suite = {
        "name": "test",
        "model": "tiny",
        "methods": [{"name": "cut_paste"}],
        "seeds": [0],
        "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
        "metrics": ["ssim_psnr"],
        "resources": {"num_cpus": 1, "max_retries": 1},
    }
    suite.update(changes)
    return make_suite(suite)
