"""8-bit colours: sampling from HSV ranges and the hex form used in ``pattern_params``."""

from __future__ import annotations

import numpy as np

RGB8 = tuple[int, int, int]


def hsv_to_rgb8(hue_deg: float, saturation: float, value: float) -> RGB8:
    hue = (hue_deg % 360.0) / 60.0
    chroma = value * saturation
    second = chroma * (1 - abs(hue % 2 - 1))
    sector = int(hue) % 6
    rgb = [
        (chroma, second, 0.0),
        (second, chroma, 0.0),
        (0.0, chroma, second),
        (0.0, second, chroma),
        (second, 0.0, chroma),
        (chroma, 0.0, second),
    ][sector]
    offset = value - chroma
    red, green, blue = (int(round(255 * (c + offset))) for c in rgb)
    return (red, green, blue)


def sample_color(
    rng: np.random.Generator,
    hues: tuple[tuple[float, float], ...],
    saturation: tuple[float, float],
    value: tuple[float, float],
) -> RGB8:
    """A colour with hue from one of ``hues`` (degree ranges) and saturation/value from their ranges."""
    low, high = hues[int(rng.integers(len(hues)))]
    return hsv_to_rgb8(rng.uniform(low, high), rng.uniform(*saturation), rng.uniform(*value))


def to_hex(color: RGB8) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def from_hex(text: str) -> RGB8:
    return (int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16))


def to_float(color: RGB8) -> np.ndarray:
    return np.asarray(color, dtype=np.float64) / 255.0
