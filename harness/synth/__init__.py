"""Procedural benchmark sets with exact ground truth (objects with named part masks, patterned parts).

``SYNTH_COLUMNS`` is the Parquet schema a synthetic set is written with: the first eleven columns are the
manifest contract of DESIGN.md ("Contracts"); the rest are ground truth only a synthetic set can carry.
This module imports only pyarrow so the manifest module can import the schema cheaply.
"""
from __future__ import annotations

import pyarrow as pa

SYNTH_COLUMNS: pa.Schema = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("source_image", pa.string(), nullable=False),
    pa.field("source_mask", pa.string(), nullable=True),
    pa.field("source_object", pa.string(), nullable=False),
    pa.field("target_image", pa.string(), nullable=False),
    pa.field("target_mask", pa.string(), nullable=True),
    pa.field("target_object", pa.string(), nullable=False),
    pa.field("target_mask_gt", pa.string(), nullable=True),
    pa.field("concept", pa.string(), nullable=True),
    pa.field("tags", pa.list_(pa.string()), nullable=False),
    # Ground truth of synthetic sets.
    pa.field("expected_image", pa.string(), nullable=True),
    pa.field("source_part", pa.string(), nullable=True),
    pa.field("target_part", pa.string(), nullable=True),
    pa.field("pattern", pa.string(), nullable=True),
    pa.field("pattern_params", pa.string(), nullable=True),  # JSON: frequency, angle, colors
])

__all__ = ["SYNTH_COLUMNS"]
