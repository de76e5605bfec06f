"""Ornament patterns, drawn inside a part in the part's own frame.

A pattern function maps coordinates measured in pattern periods, ``(u, v)``, to a bool "second colour
here". ``PatternSpec.colors_at`` builds those coordinates from object coordinates relative to the
part's bounding box (centre and larger side), rotated by the pattern angle, so a pattern follows its
part through flip, aspect and shear and means the same thing on a wall and on a ring band: the frequency
is in periods across the part's larger side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .colors import RGB8, from_hex, hsv_to_rgb8, to_float, to_hex
from .shapes import Bounds

PatternFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _frac(values: np.ndarray) -> np.ndarray:
    return values - np.floor(values)


def _staggered(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shift every other row by half a period (brick layout)."""
    return u + 0.5 * (np.floor(v) % 2)


def stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _frac(u) < 0.5


def dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du, dv = _frac(_staggered(u, v)) - 0.5, _frac(v) - 0.5
    return du * du + dv * dv < 0.29**2


def checker(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.floor(u) + np.floor(v)) % 2 == 1


def zigzag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    triangle = 2 * np.abs(_frac(u) - 0.5)
    return _frac(v + triangle) < 0.5


def lattice(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (_frac(u) < 0.2) | (_frac(v) < 0.2)


def rosette(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-petal flowers with an open centre, one per (staggered) cell."""
    du, dv = _frac(_staggered(u, v)) - 0.5, _frac(v) - 0.5
    radius = np.sqrt(du * du + dv * dv)
    # |cos(2.5 θ)| = sqrt((1 + cos 5θ) / 2), with cos 5θ the real part of ((du + i dv) / r)^5: plain
    # arithmetic instead of arctan2/cos keeps the bytes the same on every CPU.
    direction = (du + 1j * dv) / np.maximum(radius, 1e-12)
    cos_5theta = (direction * direction * direction * direction * direction).real
    petal_edge = 0.45 * (0.35 + 0.65 * np.sqrt(np.clip((1 + cos_5theta) / 2, 0.0, 1.0)))
    return (radius < petal_edge) & (radius > 0.08)


def scales(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fish scales: staggered rows of discs half a period apart, each row in front of the one below it,
    so every scale shows the U-shaped rim of its lower edge (the second colour)."""
    radius, rim, row_height = 0.56, 0.13, 0.5
    first_row = np.floor(v / row_height) - 1
    rim_here = np.zeros(np.shape(u), dtype=bool)
    covered = np.zeros(np.shape(u), dtype=bool)
    for offset in range(4):  # the rows whose discs can reach this point, front (upper) row first
        row = first_row + offset
        shift = 0.5 * (row % 2)
        centre_u = np.floor(u - shift) + 0.5 + shift
        du, dv = u - centre_u, v - row * row_height
        distance = np.sqrt(du * du + dv * dv)
        in_disc = (distance < radius) & ~covered
        rim_here |= in_disc & (distance > radius - rim)
        covered |= in_disc
    return rim_here


@dataclass(frozen=True)
class PatternKind:
    draw: PatternFn
    frequency: tuple[float, float]  # periods across the part's larger side
    angle: tuple[float, float]  # degrees


PATTERNS: dict[str, PatternKind] = {
    "stripes": PatternKind(stripes, (4.0, 8.0), (0.0, 180.0)),
    "dots": PatternKind(dots, (4.0, 7.0), (0.0, 60.0)),
    "checker": PatternKind(checker, (3.0, 6.0), (0.0, 90.0)),
    "zigzag": PatternKind(zigzag, (3.0, 6.0), (-20.0, 20.0)),
    "lattice": PatternKind(lattice, (3.0, 6.0), (30.0, 60.0)),
    "rosette": PatternKind(rosette, (2.5, 4.5), (0.0, 72.0)),
    "scales": PatternKind(scales, (3.0, 6.0), (-15.0, 15.0)),
}


@dataclass(frozen=True)
class PatternSpec:
    """One concrete pattern: kind, frequency, angle and its two colours (8-bit, so JSON round-trips exactly)."""

    name: str
    frequency: float
    angle: float
    colors: tuple[RGB8, RGB8]

    def params_json(self) -> str:
        params = {"frequency": self.frequency, "angle": self.angle, "colors": [to_hex(c) for c in self.colors]}
        return json.dumps(params, sort_keys=True)

    @classmethod
    def from_json(cls, name: str, params_json: str) -> PatternSpec:
        params = json.loads(params_json)
        first, second = (from_hex(c) for c in params["colors"])
        return cls(name, float(params["frequency"]), float(params["angle"]), (first, second))

    def colors_at(self, x: np.ndarray, y: np.ndarray, part_bounds: Bounds) -> np.ndarray:
        """RGB floats (N, 3) of the pattern at object points (x, y) of a part with these bounds."""
        x0, y0, x1, y1 = part_bounds
        side = max(x1 - x0, y1 - y0)
        s, t = (x - (x0 + x1) / 2) / side, (y - (y0 + y1) / 2) / side
        cos_a, sin_a = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        u = self.frequency * (cos_a * s + sin_a * t)
        v = self.frequency * (-sin_a * s + cos_a * t)
        second = PATTERNS[self.name].draw(u, v)
        palette = np.stack([to_float(c) for c in self.colors])
        return palette[second.astype(np.intp)]


def sample_pattern(rng: np.random.Generator, max_frequency: float) -> PatternSpec:
    """A random pattern whose period stays resolvable: frequency is capped at ``max_frequency``."""
    name = sorted(PATTERNS)[int(rng.integers(len(PATTERNS)))]
    kind = PATTERNS[name]
    frequency = min(rng.uniform(*kind.frequency), max(max_frequency, 2.0))
    angle = rng.uniform(*kind.angle)
    hue = rng.uniform(0, 360)
    light = hsv_to_rgb8(hue, rng.uniform(0.35, 0.85), rng.uniform(0.80, 0.97))
    dark = hsv_to_rgb8(hue + rng.uniform(120, 240), rng.uniform(0.55, 0.95), rng.uniform(0.18, 0.42))
    colors = (light, dark) if rng.uniform() < 0.5 else (dark, light)
    return PatternSpec(name, round(float(frequency), 3), round(float(angle), 2), colors)
