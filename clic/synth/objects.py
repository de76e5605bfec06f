"""The object table: every object the renderer knows, as named parts made of shapes.

Adding an object is one entry in ``OBJECTS``. Parts are listed in drawing order; a later part covers an
earlier one, which is what keeps the parts of one object disjoint (a house's windows are cut out of its
walls). ``details`` darken or lighten a region of a part without leaving its mask (window bars, a mug's
inside), and a part's ``role`` picks its colour from ``COLOR_ROLES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from .shapes import Annulus, Bounds, Ellipse, Lathe, Point, Polygon, Rect, RoundRect, Shape, Stroke, union_bounds

CATEGORIES: tuple[str, ...] = ("furniture", "jewelry", "building", "kitchenware")


@dataclass(frozen=True)
class Detail:
    shape: Shape
    factor: float  # multiplies the part's colour: < 1 darkens, > 1 lightens


@dataclass(frozen=True)
class PartDef:
    name: str
    shapes: tuple[Shape, ...]
    role: str  # key of COLOR_ROLES
    details: tuple[Detail, ...] = ()
    cylindrical: bool = False  # shade across the width like a turned surface

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(np.shape(x), dtype=bool)
        for shape in self.shapes:
            inside |= shape.contains(x, y)
        return inside

    def bounds(self) -> Bounds:
        return union_bounds(self.shapes)


@dataclass(frozen=True)
class ObjectDef:
    name: str
    category: str
    width: float  # object units; the object occupies [0, width] x [0, height]
    height: float
    parts: tuple[PartDef, ...]

    def part(self, name: str) -> PartDef:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(f"{self.name} has no part {name!r}; parts: {', '.join(p.name for p in self.parts)}")


@dataclass(frozen=True)
class ColorRole:
    """HSV ranges a part colour is drawn from (hue in degrees, saturation and value in [0, 1])."""

    hues: tuple[tuple[float, float], ...]
    saturation: tuple[float, float]
    value: tuple[float, float]


COLOR_ROLES: dict[str, ColorRole] = {
    "wood": ColorRole(((18, 38),), (0.45, 0.75), (0.35, 0.70)),
    "fabric": ColorRole(((0, 360),), (0.35, 0.75), (0.45, 0.85)),
    "metal": ColorRole(((38, 50), (200, 220), (10, 20)), (0.05, 0.55), (0.70, 0.90)),
    "gem": ColorRole(((0, 360),), (0.60, 0.90), (0.60, 0.95)),
    "wall": ColorRole(((0, 360),), (0.10, 0.35), (0.75, 0.95)),
    "roof": ColorRole(((0, 25), (195, 230)), (0.40, 0.70), (0.35, 0.60)),
    "glass": ColorRole(((190, 215),), (0.25, 0.45), (0.70, 0.90)),
    "ceramic": ColorRole(((0, 360),), (0.30, 0.70), (0.55, 0.90)),
}


def _arc(
    cx: float, cy: float, rx: float, ry: float, start_deg: float, stop_deg: float, steps: int
) -> tuple[Point, ...]:
    """Points along an elliptical arc (angles measured with y pointing down)."""
    angles = [math.radians(start_deg + (stop_deg - start_deg) * i / (steps - 1)) for i in range(steps)]
    return tuple((cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles)


def _legs(*rects: tuple[float, float, float, float], rear: tuple[tuple[float, float, float, float], ...]) -> PartDef:
    """Front legs at full colour, rear legs drawn darker so the piece reads as having depth."""
    front_shapes = tuple(Rect(*r) for r in rects)
    rear_shapes = tuple(Rect(*r) for r in rear)
    return PartDef("legs", rear_shapes + front_shapes, "wood", tuple(Detail(s, 0.7) for s in rear_shapes))


_CHAIR = ObjectDef(
    "chair",
    "furniture",
    0.62,
    1.0,
    (
        _legs(
            (0.03, 0.60, 0.10, 1.0),
            (0.52, 0.60, 0.59, 1.0),
            (0.10, 0.82, 0.52, 0.85),
            rear=((0.13, 0.60, 0.18, 0.90), (0.44, 0.60, 0.49, 0.90)),
        ),
        PartDef(
            "seat",
            (Polygon(((0.07, 0.52), (0.55, 0.52), (0.62, 0.60), (0.0, 0.60))), Rect(0.0, 0.60, 0.62, 0.65)),
            "fabric",
            (Detail(Rect(0.0, 0.60, 0.62, 0.65), 0.78),),
        ),
        PartDef(
            "back",
            (RoundRect(0.07, 0.0, 0.55, 0.42, 0.05), Rect(0.08, 0.40, 0.14, 0.53), Rect(0.48, 0.40, 0.54, 0.53)),
            "fabric",
        ),
    ),
)

_BENCH = ObjectDef(
    "bench",
    "furniture",
    1.5,
    0.82,
    (
        _legs(
            (0.06, 0.52, 0.14, 0.82),
            (1.36, 0.52, 1.44, 0.82),
            rear=((0.20, 0.52, 0.26, 0.74), (1.24, 0.52, 1.30, 0.74)),
        ),
        PartDef(
            "seat",
            (Polygon(((0.08, 0.42), (1.42, 0.42), (1.5, 0.49), (0.0, 0.49))), Rect(0.0, 0.49, 1.5, 0.54)),
            "wood",
            (Detail(Rect(0.0, 0.49, 1.5, 0.54), 0.78),),
        ),
        PartDef(
            "back",
            (RoundRect(0.06, 0.0, 1.44, 0.30, 0.04), Rect(0.12, 0.28, 0.18, 0.43), Rect(1.32, 0.28, 1.38, 0.43)),
            "wood",
        ),
    ),
)

_TABLE = ObjectDef(
    "table",
    "furniture",
    1.3,
    1.0,
    (
        _legs(
            (0.05, 0.36, 0.13, 1.0), (1.17, 0.36, 1.25, 1.0), rear=((0.20, 0.36, 0.26, 0.80), (1.04, 0.36, 1.10, 0.80))
        ),
        PartDef(
            "top",
            (Polygon(((0.16, 0.0), (1.14, 0.0), (1.3, 0.30), (0.0, 0.30))), Rect(0.0, 0.30, 1.3, 0.37)),
            "wood",
            (Detail(Rect(0.0, 0.30, 1.3, 0.37), 0.75),),
        ),
    ),
)

_STOOL_SIDE = (Rect(0.0, 0.13, 0.7, 0.24), Ellipse(0.35, 0.24, 0.35, 0.07))
_STOOL = ObjectDef(
    "stool",
    "furniture",
    0.7,
    1.0,
    (
        PartDef(
            "legs",
            (
                Polygon(((0.32, 0.28), (0.38, 0.28), (0.38, 0.90), (0.32, 0.90))),
                Polygon(((0.10, 0.28), (0.19, 0.28), (0.10, 1.0), (0.01, 1.0))),
                Polygon(((0.51, 0.28), (0.60, 0.28), (0.69, 1.0), (0.60, 1.0))),
                Rect(0.08, 0.68, 0.62, 0.72),
            ),
            "wood",
            (Detail(Polygon(((0.32, 0.28), (0.38, 0.28), (0.38, 0.90), (0.32, 0.90))), 0.7),),
        ),
        PartDef(
            "seat",
            (Ellipse(0.35, 0.13, 0.35, 0.13),) + _STOOL_SIDE,
            "fabric",
            tuple(Detail(s, 0.78) for s in _STOOL_SIDE),
        ),
    ),
)

_RING = ObjectDef(
    "ring",
    "jewelry",
    1.0,
    1.3,
    (
        PartDef(
            "band",
            (Annulus(0.5, 0.83, 0.46, 0.46, 0.13), Polygon(((0.36, 0.34), (0.64, 0.34), (0.58, 0.42), (0.42, 0.42)))),
            "metal",
        ),
        PartDef(
            "gem",
            (Polygon(((0.30, 0.10), (0.70, 0.10), (0.84, 0.24), (0.50, 0.48), (0.16, 0.24))),),
            "gem",
            (
                Detail(Polygon(((0.38, 0.10), (0.62, 0.10), (0.68, 0.24), (0.32, 0.24))), 1.3),
                Detail(Polygon(((0.50, 0.48), (0.84, 0.24), (0.50, 0.24))), 0.72),
            ),
        ),
    ),
)

_NECKLACE = ObjectDef(
    "necklace",
    "jewelry",
    1.2,
    1.16,
    (
        PartDef("chain", (Stroke(_arc(0.6, 0.05, 0.53, 0.70, 0, 180, 33), 0.09),), "metal"),
        PartDef(
            "pendant",
            (Ellipse(0.6, 0.92, 0.17, 0.19), Polygon(((0.6, 0.66), (0.46, 0.86), (0.74, 0.86)))),
            "gem",
            (Detail(Ellipse(0.55, 0.88, 0.06, 0.07), 1.3),),
        ),
    ),
)

_BRACELET = ObjectDef(
    "bracelet",
    "jewelry",
    1.3,
    0.96,
    (
        PartDef("band", (Annulus(0.65, 0.48, 0.64, 0.46, 0.17),), "metal"),
        PartDef("stone", (Ellipse(0.65, 0.85, 0.14, 0.10),), "gem", (Detail(Ellipse(0.61, 0.83, 0.05, 0.035), 1.3),)),
    ),
)

_HOUSE_WINDOWS = (Rect(0.18, 0.56, 0.38, 0.74), Rect(0.62, 0.56, 0.82, 0.74))
_HOUSE = ObjectDef(
    "house",
    "building",
    1.0,
    1.0,
    (
        PartDef("walls", (Rect(0.1, 0.42, 0.9, 1.0),), "wall"),
        PartDef("roof", (Rect(0.68, 0.06, 0.79, 0.30), Polygon(((0.0, 0.46), (0.5, 0.02), (1.0, 0.46)))), "roof"),
        PartDef(
            "windows",
            _HOUSE_WINDOWS,
            "glass",
            tuple(
                Detail(bar, 0.45)
                for x0, y0, x1, y1 in (w.bounds() for w in _HOUSE_WINDOWS)
                for bar in (
                    Rect((x0 + x1) / 2 - 0.008, y0, (x0 + x1) / 2 + 0.008, y1),
                    Rect(x0, (y0 + y1) / 2 - 0.008, x1, (y0 + y1) / 2 + 0.008),
                )
            ),
        ),
        PartDef("door", (Rect(0.43, 0.66, 0.57, 1.0),), "wood", (Detail(Ellipse(0.535, 0.84, 0.012, 0.012), 0.4),)),
    ),
)


def _arched(x0: float, y0: float, x1: float, y1: float) -> tuple[Shape, Shape]:
    """A window or door with a round top: a rectangle capped by a half ellipse."""
    return (Rect(x0, y0, x1, y1), Ellipse((x0 + x1) / 2, y0, (x1 - x0) / 2, (x1 - x0) * 0.4))


_TOWER = ObjectDef(
    "tower",
    "building",
    0.56,
    1.5,
    (
        PartDef("walls", (Rect(0.06, 0.42, 0.50, 1.5),), "wall", cylindrical=True),
        PartDef("roof", (Polygon(((0.0, 0.47), (0.28, 0.0), (0.56, 0.47))),), "roof"),
        PartDef("windows", _arched(0.22, 0.62, 0.34, 0.76) + _arched(0.22, 0.92, 0.34, 1.06), "glass"),
        PartDef("door", _arched(0.18, 1.24, 0.38, 1.5), "wood"),
    ),
)

_MUG = ObjectDef(
    "mug",
    "kitchenware",
    1.0,
    0.92,
    (
        PartDef("handle", (Annulus(0.72, 0.46, 0.25, 0.23, 0.085),), "ceramic"),
        PartDef(
            "body",
            (
                RoundRect(0.0, 0.07, 0.74, 0.86, 0.06),
                Ellipse(0.37, 0.07, 0.37, 0.065),
                Ellipse(0.37, 0.85, 0.37, 0.065),
            ),
            "ceramic",
            (Detail(Ellipse(0.37, 0.07, 0.33, 0.045), 0.55),),
            cylindrical=True,
        ),
    ),
)

_VASE = ObjectDef(
    "vase",
    "kitchenware",
    0.74,
    1.2,
    (
        PartDef(
            "body",
            (Lathe(0.37, 0.30, 1.2, (0.13, 0.20, 0.28, 0.34, 0.37, 0.37, 0.35, 0.31, 0.26, 0.21, 0.19)),),
            "ceramic",
            cylindrical=True,
        ),
        PartDef(
            "neck",
            (Lathe(0.37, 0.0, 0.33, (0.17, 0.15, 0.11, 0.095, 0.095, 0.105, 0.13)),),
            "ceramic",
            (Detail(Ellipse(0.37, 0.012, 0.14, 0.012), 0.5),),
            cylindrical=True,
        ),
    ),
)

OBJECTS: dict[str, ObjectDef] = {
    obj.name: obj for obj in (_CHAIR, _BENCH, _TABLE, _STOOL, _RING, _NECKLACE, _BRACELET, _HOUSE, _TOWER, _MUG, _VASE)
}


def objects_in(category: str) -> tuple[ObjectDef, ...]:
    return tuple(obj for obj in OBJECTS.values() if obj.category == category)


# Groups of "object.part" that play the same role; a pattern on one may be transferred to any other
# member of a group it shares. Only parts big enough to show a pattern are listed (no legs, handles).
CORRESPONDENCES: tuple[tuple[str, ...], ...] = (
    ("chair.back", "bench.back", "stool.seat", "table.top"),  # the broad decorated surface
    ("chair.seat", "bench.seat", "stool.seat"),
    ("ring.band", "bracelet.band", "necklace.chain"),
    ("ring.gem", "necklace.pendant", "bracelet.stone"),
    ("house.walls", "tower.walls"),
    ("house.roof", "tower.roof"),
    ("house.door", "tower.door"),
    ("mug.body", "vase.body"),
    # Across categories: turned surfaces, and upright flat panels.
    ("mug.body", "vase.body", "tower.walls"),
    ("chair.back", "bench.back", "house.walls"),
)


@cache
def corresponding_parts(key: str) -> tuple[str, ...]:
    """Every "object.part" that corresponds to ``key`` (itself included), sorted."""
    return tuple(sorted({member for group in CORRESPONDENCES if key in group for member in group}))


@cache
def pattern_carriers(object_name: str) -> tuple[str, ...]:
    """The parts of an object that appear in the correspondence table, as "object.part" keys."""
    return tuple(sorted({key for group in CORRESPONDENCES for key in group if key.split(".")[0] == object_name}))
