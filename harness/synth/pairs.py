"""Transfer pairs with exact ground truth: a pattern on a source part, the corresponding target part, and
the target as it should look with the pattern moved onto that part."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clic.synth.objects import CATEGORIES, OBJECTS, corresponding_parts, objects_in, pattern_carriers
from clic.synth.patterns import PatternSpec, sample_pattern
from clic.synth.render import Instance, rasterize, sample_instance

MIN_PERIOD_PX = 5.0  # the finest pattern period drawn on the smaller of the two parts


@dataclass
class SynthPair:
    pair_id: str
    category: str
    source_object: str
    source_part: str
    target_object: str
    target_part: str
    pattern: PatternSpec
    source_image: np.ndarray  # float32 (H, W, 3) in [0, 1]
    source_mask: np.ndarray  # bool (H, W)
    target_image: np.ndarray
    target_mask: np.ndarray
    expected_image: np.ndarray
    source_instance: Instance  # the sampled scenes, to re-render either object differently
    target_instance: Instance

    @property
    def concept(self) -> str:
        return f"{self.pattern.name} on {self.source_object} {self.source_part}"

    @property
    def tags(self) -> list[str]:
        same_category = OBJECTS[self.source_object].category == OBJECTS[self.target_object].category
        return [
            "synthetic",
            f"pattern:{self.pattern.name}",
            "same-category" if same_category else "cross-category",
            "same-object" if self.source_object == self.target_object else "other-object",
        ]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def make_pair(category: str, index: int, seed: int, size: int) -> SynthPair:
    """Pair ``index`` of ``category``; it depends only on (seed, category, index), not on how many pairs the set has."""
    rng = np.random.default_rng([seed, CATEGORIES.index(category), index])
    source_name = _pick(rng, tuple(obj.name for obj in objects_in(category)))
    source_key = _pick(rng, pattern_carriers(source_name))
    target_key = _pick(rng, corresponding_parts(source_key))
    (source_object, source_part), (target_object, target_part) = source_key.split("."), target_key.split(".")

    source = sample_instance(rng, OBJECTS[source_object])
    target = sample_instance(rng, OBJECTS[target_object])
    smaller_side = min(source.part_side_px(source_part, size), target.part_side_px(target_part, size))
    pattern = sample_pattern(rng, max_frequency=smaller_side / MIN_PERIOD_PX)

    source_raster, target_raster = rasterize(source, size), rasterize(target, size)
    return SynthPair(
        pair_id=f"{category}-s{seed}-{index:03d}",
        category=category,
        source_object=source_object,
        source_part=source_part,
        target_object=target_object,
        target_part=target_part,
        pattern=pattern,
        source_image=source_raster.paint({source_part: pattern}),
        source_mask=source_raster.part_masks()[source_part],
        target_image=target_raster.paint(),
        target_mask=target_raster.part_masks()[target_part],
        expected_image=target_raster.paint({target_part: pattern}),
        source_instance=source,
        target_instance=target,
    )
