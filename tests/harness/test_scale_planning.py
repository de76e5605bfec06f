"""issue 25: planning 100k jobs in seconds must not change a single id."""

from __future__ import annotations

import math

from harness.plan.jobs import spliced_json
from harness.store import canonical_json


def test_spliced_json_is_canonical_json_character_for_character():
    settings = {
        "steps": 500,
        "lr": 1e-5,
        "terms": {"con": {"weight": 1.0, "alpha": 0.5}, "att": 0.5},
        "roi_prompts": ("A photo of {token}",),
        "init_word": None,
        "é": "ü",
        "nan": math.nan,
    }
    known = {id(settings): (settings, canonical_json(settings))}
    data = {
        "concept": "abc",
        "settings": {"transfer": settings, "match": None},
        "learn": settings,
        "targets": {"pair_id": "p1", "target_mask": None},
        "metrics": [["ssim_psnr", "1"]],
        "by_seed": {3: "a", 1: "b"},
    }
    assert spliced_json(data, known) == canonical_json(data)
    # a cached entry whose dict was replaced (same id reused) is not trusted
    other = dict(settings, steps=1)
    assert spliced_json({"learn": other}, {id(other): (settings, canonical_json(settings))}) == canonical_json(
        {"learn": other}
    )
