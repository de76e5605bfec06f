"""Writing a synthetic set: PNGs in ``images/`` and ``masks/`` plus ``manifest.parquet``.

The output is byte-identical for the same arguments: PNGs are written with fixed encoder settings and no
metadata chunks, and the Parquet file is built from plain Python rows (no pandas metadata, no
timestamps) with fixed writer options.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from . import SYNTH_COLUMNS
from .pairs import SynthPair, make_pair

MANIFEST_NAME = "manifest.parquet"
PNG_OPTIONS = {"format": "PNG", "compress_level": 9, "optimize": False}


def save_image(image: np.ndarray, path: Path) -> None:
    """Save a float (H, W, 3) image in [0, 1] as 8-bit RGB PNG."""
    Image.fromarray(np.round(image * 255.0).astype(np.uint8), mode="RGB").save(path, **PNG_OPTIONS)


def save_mask(mask: np.ndarray, path: Path) -> None:
    """Save a bool (H, W) mask as 8-bit L PNG with values 0 and 255."""
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path, **PNG_OPTIONS)


def _write_pair(pair: SynthPair, root: Path) -> dict[str, object]:
    """Write the pair's files under ``root`` and return its manifest row (paths relative, posix)."""
    files = {
        "source_image": f"images/{pair.pair_id}_source.png",
        "target_image": f"images/{pair.pair_id}_target.png",
        "expected_image": f"images/{pair.pair_id}_expected.png",
        "source_mask": f"masks/{pair.pair_id}_source.png",
        "target_mask": f"masks/{pair.pair_id}_target.png",
    }
    save_image(pair.source_image, root / files["source_image"])
    save_image(pair.target_image, root / files["target_image"])
    save_image(pair.expected_image, root / files["expected_image"])
    save_mask(pair.source_mask, root / files["source_mask"])
    save_mask(pair.target_mask, root / files["target_mask"])
    return {
        "pair_id": pair.pair_id,
        "category": pair.category,
        "source_image": files["source_image"],
        "source_mask": files["source_mask"],
        "source_object": pair.source_object,
        "target_image": files["target_image"],
        "target_mask": files["target_mask"],
        "target_object": pair.target_object,
        # The RoI handed to methods is the exact part mask, so it is its own ground truth.
        "target_mask_gt": files["target_mask"],
        "concept": pair.concept,
        "tags": pair.tags,
        "expected_image": files["expected_image"],
        "source_part": pair.source_part,
        "target_part": pair.target_part,
        "pattern": pair.pattern.name,
        "pattern_params": pair.pattern.params_json(),
    }


def write_manifest(rows: Sequence[dict[str, object]], path: Path) -> None:
    table = pa.Table.from_pylist(list(rows), schema=SYNTH_COLUMNS)
    pq.write_table(table, path, compression="zstd", compression_level=9, use_dictionary=False, write_statistics=False)


def write_set(out_dir: Path, categories: Sequence[str], pairs_per_category: int, size: int, seed: int) -> Path:
    """Render ``pairs_per_category`` pairs of each category into ``out_dir``; returns the manifest path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    rows = [
        _write_pair(make_pair(category, index, seed, size), out_dir)
        for category in categories
        for index in range(pairs_per_category)
    ]
    manifest = out_dir / MANIFEST_NAME
    write_manifest(rows, manifest)
    return manifest
