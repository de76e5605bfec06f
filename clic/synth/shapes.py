"""Shape primitives of the procedural renderer: inside-tests in an object's own frame.

Coordinates are object units with y pointing down. Every shape answers ``contains(x, y)`` for arrays
of points and gives its axis-aligned ``bounds()``. Rasterising is evaluating these tests at
supersampled pixel centres mapped back into the object's frame, so flip, aspect and shear cost nothing
and the geometry of an image and of its masks is the same by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

Bounds = tuple[float, float, float, float]  # x0, y0, x1, y1
Point = tuple[float, float]


class Shape(Protocol):
    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def bounds(self) -> Bounds: ...


@dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x >= self.x0) & (x < self.x1) & (y >= self.y0) & (y < self.y1)

    def bounds(self) -> Bounds:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class RoundRect:
    x0: float
    y0: float
    x1: float
    y1: float
    radius: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # Distance from the rectangle shrunk by the radius, so corners become quarter circles.
        dx = np.maximum(np.maximum(self.x0 + self.radius - x, x - (self.x1 - self.radius)), 0.0)
        dy = np.maximum(np.maximum(self.y0 + self.radius - y, y - (self.y1 - self.radius)), 0.0)
        inside_box = (x >= self.x0) & (x < self.x1) & (y >= self.y0) & (y < self.y1)
        return inside_box & (dx * dx + dy * dy <= self.radius * self.radius)

    def bounds(self) -> Bounds:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1.0

    def bounds(self) -> Bounds:
        return (self.cx - self.rx, self.cy - self.ry, self.cx + self.rx, self.cy + self.ry)


@dataclass(frozen=True)
class Annulus:
    """An elliptical ring: the outer ellipse minus the one shrunk by ``thickness`` on both radii."""

    cx: float
    cy: float
    rx: float
    ry: float
    thickness: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        outer = Ellipse(self.cx, self.cy, self.rx, self.ry).contains(x, y)
        inner = Ellipse(self.cx, self.cy, self.rx - self.thickness, self.ry - self.thickness).contains(x, y)
        return outer & ~inner

    def bounds(self) -> Bounds:
        return Ellipse(self.cx, self.cy, self.rx, self.ry).bounds()


@dataclass(frozen=True)
class Polygon:
    points: tuple[Point, ...]

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(np.shape(x), dtype=bool)
        closed = self.points + self.points[:1]
        for (xa, ya), (xb, yb) in zip(closed[:-1], closed[1:]):
            if ya == yb:  # a horizontal edge never crosses a horizontal ray
                continue
            straddles = (ya > y) != (yb > y)
            crossing_x = xa + (xb - xa) * (y - ya) / (yb - ya)
            inside ^= straddles & (x < crossing_x)  # even-odd rule
        return inside

    def bounds(self) -> Bounds:
        xs, ys = zip(*self.points)
        return (min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True)
class Stroke:
    """A polyline of the given width with round joins and caps (a cord, a chain)."""

    points: tuple[Point, ...]
    width: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        half_sq = (self.width / 2) ** 2
        inside = np.zeros(np.shape(x), dtype=bool)
        for (xa, ya), (xb, yb) in zip(self.points[:-1], self.points[1:]):
            ex, ey = xb - xa, yb - ya
            along = np.clip(((x - xa) * ex + (y - ya) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            inside |= (x - xa - along * ex) ** 2 + (y - ya - along * ey) ** 2 <= half_sq
        return inside

    def bounds(self) -> Bounds:
        xs, ys = zip(*self.points)
        half = self.width / 2
        return (min(xs) - half, min(ys) - half, max(xs) + half, max(ys) + half)


@dataclass(frozen=True)
class Lathe:
    """A turned silhouette (vase, bottle): half-widths sampled evenly from ``y0`` to ``y1`` around ``cx``."""

    cx: float
    y0: float
    y1: float
    half_widths: tuple[float, ...]

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        levels = np.linspace(self.y0, self.y1, len(self.half_widths))
        half_width = np.interp(y, levels, self.half_widths)
        return (y >= self.y0) & (y < self.y1) & (np.abs(x - self.cx) <= half_width)

    def bounds(self) -> Bounds:
        widest = max(self.half_widths)
        return (self.cx - widest, self.y0, self.cx + widest, self.y1)


def union_bounds(shapes: tuple[Shape, ...]) -> Bounds:
    boxes = [shape.bounds() for shape in shapes]
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
