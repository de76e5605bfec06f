"""Rendering one object instance: placement, colours, supersampled rasterisation, painting and masks.

Each pixel is sampled on a ``SUPERSAMPLE`` x ``SUPERSAMPLE`` grid of sub-pixel centres that are mapped
back into the object's frame and labelled with the topmost part containing them. Colours are averaged
over each block (a box filter, which anti-aliases the edges) and a part's mask is its label coverage
thresholded at 0.5 over the same blocks, so images and masks come from one geometry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .colors import RGB8, sample_color, to_float
from .objects import COLOR_ROLES, ObjectDef, PartDef
from .patterns import PatternSpec

SUPERSAMPLE = 4
OUTLINE_SUBPIXELS = 2  # a dark line of about one pixel where two labels meet
OUTLINE_FACTOR = 0.55
MARGIN = 0.04  # free border around the object, as a fraction of the image side


@dataclass(frozen=True)
class Placement:
    """Where and how an object sits in the image.

    Lengths are fractions of the image side, so one sampled scene renders the same at any pixel size.
    Object point (x, y) lands at ``center + scale * (aspect * (x' - w/2) + shear * (y - h/2), y - h/2)``
    with ``x' = w - x`` when flipped.
    """

    scale: float  # image fraction per object unit
    aspect: float  # horizontal stretch
    shear: float  # horizontal shift per unit of height: a cheap change of viewpoint
    flip: bool
    center: tuple[float, float]

    def to_object(self, obj: ObjectDef, x_img: np.ndarray, y_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Object coordinates of image points (given as fractions of the image side)."""
        y = (y_img - self.center[1]) / self.scale + obj.height / 2
        x = ((x_img - self.center[0]) / self.scale - self.shear * (y - obj.height / 2)) / self.aspect + obj.width / 2
        return (obj.width - x if self.flip else x), y


def sample_placement(rng: np.random.Generator, obj: ObjectDef) -> Placement:
    fill = rng.uniform(0.62, 0.86)
    aspect = rng.uniform(0.85, 1.15)
    shear = rng.uniform(-0.2, 0.2)
    flip = bool(rng.uniform() < 0.5)
    sheared_width = aspect * obj.width + abs(shear) * obj.height
    scale = fill / max(sheared_width, obj.height)
    half_w, half_h = scale * sheared_width / 2, scale * obj.height / 2
    center = (rng.uniform(MARGIN + half_w, 1 - MARGIN - half_w), rng.uniform(MARGIN + half_h, 1 - MARGIN - half_h))
    return Placement(scale, aspect, shear, flip, (float(center[0]), float(center[1])))


@dataclass(frozen=True)
class Instance:
    """One sampled object: its definition, placement, background tint and a colour per colour role."""

    obj: ObjectDef
    placement: Placement
    background: RGB8
    colors: Mapping[str, RGB8] = field(hash=False)

    def part_side_px(self, part_name: str, size: int) -> float:
        """Approximate pixel length of the part's larger side (what a pattern frequency is relative to)."""
        x0, y0, x1, y1 = self.obj.part(part_name).bounds()
        return max(x1 - x0, y1 - y0) * self.placement.scale * min(self.placement.aspect, 1.0) * size


def sample_instance(rng: np.random.Generator, obj: ObjectDef) -> Instance:
    placement = sample_placement(rng, obj)
    background = sample_color(rng, ((0.0, 360.0),), (0.04, 0.16), (0.90, 0.98))
    roles = sorted({part.role for part in obj.parts})
    colors = {
        role: sample_color(rng, COLOR_ROLES[role].hues, COLOR_ROLES[role].saturation, COLOR_ROLES[role].value)
        for role in roles
    }
    return Instance(obj, placement, background, colors)


def _shading(part: PartDef, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brightness factor per point: details of the part, and a soft falloff across turned surfaces."""
    factor = np.ones(np.shape(x))
    if part.cylindrical:
        x0, _, x1, _ = part.bounds()
        across = np.clip((x - x0) / (x1 - x0), 0.0, 1.0)
        # Lambert shading of a cylinder: the normal's depth component is sqrt(1 - s^2), s in [-1, 1].
        factor *= 0.72 + 0.28 * np.sqrt(4 * across * (1 - across))
    for detail in part.details:
        factor[detail.shape.contains(x, y)] *= detail.factor
    return factor


def _block_mean(values: np.ndarray) -> np.ndarray:
    """Average over each SUPERSAMPLE x SUPERSAMPLE block (the box filter).

    Summed slice by slice in a fixed order: a vectorised reduction may sum in a CPU-dependent order,
    and the output must be the same bytes everywhere."""
    total = np.zeros_like(values[::SUPERSAMPLE, ::SUPERSAMPLE], dtype=np.float64)
    for dy in range(SUPERSAMPLE):
        for dx in range(SUPERSAMPLE):
            total += values[dy::SUPERSAMPLE, dx::SUPERSAMPLE]
    return total / SUPERSAMPLE**2


@dataclass
class Raster:
    """The supersampled geometry of an instance: object coordinates and the part label of every sub-pixel."""

    instance: Instance
    size: int
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray  # 0 = background, k = instance.obj.parts[k - 1]

    def part_masks(self) -> dict[str, np.ndarray]:
        """One bool (size, size) mask per part: coverage >= 0.5; a tie goes to the part drawn on top."""
        masks: dict[str, np.ndarray] = {}
        claimed = np.zeros((self.size, self.size), dtype=bool)
        parts = self.instance.obj.parts
        for index in range(len(parts), 0, -1):
            mask = (_block_mean((self.labels == index).astype(np.float64)) >= 0.5) & ~claimed
            claimed |= mask
            masks[parts[index - 1].name] = mask
        return {part.name: masks[part.name] for part in parts}

    def paint(self, patterns: Mapping[str, PatternSpec] | None = None) -> np.ndarray:
        """The image as float32 (size, size, 3) in [0, 1], with ``patterns`` drawn on the named parts."""
        patterns = patterns or {}
        colors = self.instance.colors
        rgb = np.empty(self.labels.shape + (3,))
        rgb[:] = to_float(self.instance.background)
        for index, part in enumerate(self.instance.obj.parts, start=1):
            here = self.labels == index
            x, y = self.x[here], self.y[here]
            if part.name in patterns:
                fill = patterns[part.name].colors_at(x, y, part.bounds())
            else:
                fill = np.broadcast_to(to_float(colors[part.role]), (x.size, 3))
            rgb[here] = fill * _shading(part, x, y)[:, None]
        rgb[self._outline()] *= OUTLINE_FACTOR
        return np.clip(_block_mean(rgb), 0.0, 1.0).astype(np.float32)

    def _outline(self) -> np.ndarray:
        """Object sub-pixels within OUTLINE_SUBPIXELS of a different label."""
        labels, step = self.labels, OUTLINE_SUBPIXELS
        edge = np.zeros(labels.shape, dtype=bool)
        edge[step:, :] |= labels[step:, :] != labels[:-step, :]
        edge[:-step, :] |= labels[:-step, :] != labels[step:, :]
        edge[:, step:] |= labels[:, step:] != labels[:, :-step]
        edge[:, :-step] |= labels[:, :-step] != labels[:, step:]
        return edge & (labels > 0)


def rasterize(instance: Instance, size: int) -> Raster:
    samples = size * SUPERSAMPLE
    centres = (np.arange(samples) + 0.5) / samples
    x_img, y_img = np.meshgrid(centres, centres)
    x, y = instance.placement.to_object(instance.obj, x_img, y_img)
    labels = np.zeros((samples, samples), dtype=np.uint8)
    for index, part in enumerate(instance.obj.parts, start=1):
        labels[part.contains(x, y)] = index
    return Raster(instance, size, x, y, labels)
