"""The world's data: an unbounded, seeded stream of captioned renders of the synthetic objects.

Every scene is a function of ``(seed, split, index)`` alone: one object of :data:`clic.synth.objects.OBJECTS`,
its placement and colours (:func:`clic.synth.render.sample_instance`), and, in most scenes, one pattern on one of
its pattern-carrying parts. The caption is written from those same parameters ("a stool with a pink scales seat
on a lilac background"), never from the pixels, so a caption is exact by construction.

The split is part of the seed sequence (``default_rng([seed, SPLITS.index(split), index])``): the train and the
held-out streams are disjoint seeded streams, and step ``k`` of a training run reads the same scenes on every
machine, so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from clic.synth.colors import RGB8
from clic.synth.objects import OBJECTS, pattern_carriers
from clic.synth.patterns import PATTERNS, PatternSpec, sample_pattern
from clic.synth.render import Instance, rasterize, sample_instance

SPLITS: tuple[str, ...] = ("train", "heldout")
WORLD_SEED = 0
WORLD_SIZE = 64  # pixels: the tiny models' native resolution
PATTERNED_FRACTION = 0.8  # scenes with a pattern on one part; the rest show the object in its plain colours
MIN_PERIOD_PX = 4.0  # finest pattern period drawn at WORLD_SIZE (the benchmark pairs use 5 px at their size)
OBJECT_NAMES: tuple[str, ...] = tuple(sorted(OBJECTS))
PATTERN_NAMES: tuple[str, ...] = tuple(sorted(PATTERNS))

# Hue sectors (degrees, upper bounds) and their names: saturated colours, and the pale tints backgrounds have.
_HUE_NAMES = (
    (15, "red"),
    (40, "orange"),
    (68, "yellow"),
    (160, "green"),
    (200, "teal"),
    (255, "blue"),
    (290, "purple"),
    (345, "pink"),
    (360, "red"),
)
_TINT_NAMES = (
    (20, "rose"),
    (50, "peach"),
    (75, "cream"),
    (165, "mint"),
    (225, "sky"),
    (270, "periwinkle"),
    (340, "lilac"),
    (360, "rose"),
)


def _hsv(color: RGB8) -> tuple[float, float, float]:
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255.0 for c in color))
    return hue * 360.0, saturation, value


def _sector(hue: float, names: tuple[tuple[int, str], ...]) -> str:
    return next(name for upper, name in names if hue < upper)


def color_name(color: RGB8) -> str:
    """A plain English name of an 8-bit colour, from its hue, saturation and value."""
    hue, saturation, value = _hsv(color)
    if value < 0.22:
        return "black"
    if saturation < 0.2:
        return "white" if value > 0.8 else "grey"
    name = _sector(hue, _HUE_NAMES)
    if name == "orange" and value < 0.6:
        return "brown"
    return name


def tint_name(color: RGB8) -> str:
    """The name of a pale background tint (saturation 0.04-0.16 in :func:`sample_instance`): its hue sector."""
    return _sector(_hsv(color)[0], _TINT_NAMES)


@dataclass(frozen=True)
class WorldScene:
    """One scene of the world: everything the image and the caption are made from."""

    seed: int
    split: str
    index: int
    instance: Instance
    part: str | None  # the patterned part, or None for a plain object
    pattern: PatternSpec | None

    @property
    def object_name(self) -> str:
        return self.instance.obj.name

    @property
    def caption(self) -> str:
        background = tint_name(self.instance.background)
        if self.pattern is None:
            return f"a plain {self.object_name} on a {background} background"
        return (
            f"a {self.object_name} with a {color_name(self.pattern.colors[0])} {self.pattern.name} "
            f"{self.part} on a {background} background"
        )

    def render(self, size: int = WORLD_SIZE) -> np.ndarray:
        """float32 (size, size, 3) in [0, 1]."""
        patterns = {self.part: self.pattern} if self.pattern is not None else None
        return rasterize(self.instance, size).paint(patterns)


def sample_scene(index: int, split: str = "train", seed: int = WORLD_SEED) -> WorldScene:
    """Scene ``index`` of a split's stream; it depends only on ``(seed, split, index)``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"scene index must be non-negative, got {index}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    obj = OBJECTS[OBJECT_NAMES[int(rng.integers(len(OBJECT_NAMES)))]]
    instance = sample_instance(rng, obj)
    if rng.uniform() >= PATTERNED_FRACTION:
        return WorldScene(seed, split, index, instance, None, None)
    carriers = pattern_carriers(obj.name)
    part = carriers[int(rng.integers(len(carriers)))].split(".")[1]
    pattern = sample_pattern(rng, max_frequency=instance.part_side_px(part, WORLD_SIZE) / MIN_PERIOD_PX)
    return WorldScene(seed, split, index, instance, part, pattern)


def render_batch(
    start: int, count: int, split: str = "train", seed: int = WORLD_SEED, size: int = WORLD_SIZE
) -> tuple[np.ndarray, list[str]]:
    """Scenes ``start .. start + count - 1`` of a split: images float32 (count, 3, size, size) in [-1, 1]
    (the VAE's range) and their captions."""
    scenes = [sample_scene(index, split, seed) for index in range(start, start + count)]
    images = np.stack([scene.render(size) for scene in scenes]).transpose(0, 3, 1, 2)
    return images * 2.0 - 1.0, [scene.caption for scene in scenes]
