"""Procedural benchmark sets with exact ground truth (objects with named part masks, patterned parts).

``SYNTH_COLUMNS`` is the Parquet schema a synthetic set is written with: the manifest contract
(:data:`harness.plan.manifest.MANIFEST_SCHEMA`; "Contracts" in ../shared/DESIGN.md, outside this repository) plus
the ground-truth columns only a synthetic set can carry (:data:`harness.plan.manifest.GROUND_TRUTH_FIELDS`).
"""

from __future__ import annotations

import pyarrow as pa

from ..plan.manifest import GROUND_TRUTH_FIELDS, MANIFEST_SCHEMA

SYNTH_COLUMNS: pa.Schema = pa.schema([*MANIFEST_SCHEMA, *GROUND_TRUTH_FIELDS], metadata=MANIFEST_SCHEMA.metadata)

__all__ = ["SYNTH_COLUMNS"]
