"""Masks as users have them (:func:`load_mask`), as boolean (H, W) arrays; re-exported by :mod:`clic.io`.

A pixel is in the mask where *any* colour channel is at least half of full scale (128 of 255, 32768 of 65535, 0.5
for float images), so soft masks are thresholded at 0.5 and a white-on-black mask means the same in L, RGB or
palette form. One exception: an RGBA (or LA) mask whose colour channels are constant but whose alpha varies (a
shape drawn as opacity, as many editors export it) is read from its alpha channel instead. An empty mask is an
error; a full mask is allowed and means "the whole image is the region". EXIF orientation is applied to masks
too, so a mask drawn on the displayed image lines up with it.

Masks are thresholded strip by strip in their own dtype, so a 16-bit mask never exists as a wider copy (a
13000×13000 mask: 338 MB decoded, 169 MB as booleans).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from .image_files import (
    ALPHA_MODES,
    FULL_16BIT,
    HALF_8BIT,
    HALF_16BIT,
    INT16_MODES,
    ImageSource,
    InputError,
    decode_image,
    display_name,
    exif_orientation,
    open_image,
    oriented,
)

# Largest relative difference of aspect ratios that still counts as "the same shape" (rounding of sizes).
ASPECT_TOLERANCE = 0.01


def aspect_ratios_match(size_a: tuple[int, int], size_b: tuple[int, int], tolerance: float = ASPECT_TOLERANCE) -> bool:
    """True when two (W, H) sizes have the same shape up to ``tolerance`` (relative)."""
    ratio_a = size_a[0] / size_a[1]
    ratio_b = size_b[0] / size_b[1]
    return abs(ratio_a - ratio_b) <= tolerance * ratio_b


# Rows converted at a time by :func:`mask_from_pil`: a 13000-pixel-wide 16-bit mask costs ~50 MB per strip in
# its own dtype instead of a whole-image int64 copy (1.35 GB), so masks stay bool/uint8 while decoded.
_MASK_STRIP_ROWS = 1024


def _strips(image: Image.Image) -> Iterator[tuple[int, int, Image.Image]]:
    """(top, bottom, strip) over horizontal strips of a decoded image (each a PIL crop: a copy of the rows only)."""
    width, height = image.size
    for top in range(0, height, _MASK_STRIP_ROWS):
        bottom = min(height, top + _MASK_STRIP_ROWS)
        yield top, bottom, image.crop((0, top, width, bottom))


def _threshold_by_strips(image: Image.Image, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    mask = np.empty((image.size[1], image.size[0]), dtype=bool)
    for top, bottom, strip in _strips(image):
        mask[top:bottom] = convert(strip)
    return mask


def mask_from_pil(image: Image.Image, *, name: str = "mask") -> np.ndarray:
    """The boolean mask of a decoded PIL image of any mode (the rule is in the module docstring).

    Wide-value modes (16-bit, 32-bit, float) and colour conversions run strip by strip in the image's own
    dtype, so the extra memory is a few strips, not a copy of the image in a wider type.
    """
    mode = image.mode
    if mode == "1":
        return np.array(image, dtype=bool)
    if mode in INT16_MODES:
        return _threshold_by_strips(
            image, lambda strip: _checked_threshold(np.asarray(strip), HALF_16BIT, FULL_16BIT, name, mode)
        )

    if mode == "F":

        def float_strip(strip: Image.Image) -> np.ndarray:
            values = np.asarray(strip, dtype=np.float32)
            if values.min() < 0.0 or values.max() > 1.0:
                raise InputError(name, "float mask values outside [0, 1]")
            return values >= 0.5

        return _threshold_by_strips(image, float_strip)
    if mode == "L":
        return np.asarray(image) >= HALF_8BIT
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        colour, alpha = rgba[..., :3], rgba[..., 3]
        if colour.min() == colour.max() and alpha.min() != alpha.max():
            return alpha >= HALF_8BIT
        return colour.max(axis=-1) >= HALF_8BIT
    return _threshold_by_strips(image, lambda strip: np.asarray(strip.convert("RGB")).max(axis=-1) >= HALF_8BIT)


def _checked_threshold(values: np.ndarray, half: int, full: int, name: str, mode: str) -> np.ndarray:
    if values.min() < 0 or values.max() > full:
        raise InputError(name, f"{mode} mask values outside 0..{full}")
    return values >= half


def _full_scale_max(image: Image.Image) -> str:
    """The mask's largest value on its own scale, for the "empty mask" message."""
    if image.mode in INT16_MODES:
        return f"{max(int(np.asarray(strip).max()) for _, _, strip in _strips(image))} of {FULL_16BIT}"
    if image.mode == "F":
        return f"{float(np.asarray(image).max()):.3g} of 1.0"
    return f"{int(np.asarray(image.convert('RGB')).max())} of 255"


def load_mask(source: ImageSource, size: tuple[int, int] | None = None, *, name: str | None = None) -> np.ndarray:
    """A mask file as a boolean (H, W) array; with ``size=(W, H)`` resized (nearest) to that size.

    Raises :class:`InputError` when the file is unreadable, the mask is empty (also when it becomes
    empty by the resize), or its aspect ratio differs from ``size``'s by more than 1 %.
    """
    name = display_name(source, name)
    with open_image(source, name) as opened:
        orientation = exif_orientation(opened)
        decode_image(opened, name)
        image = oriented(opened, orientation)
        mask = mask_from_pil(image, name=name)
        if not mask.any():
            raise InputError(
                name, f"mask is empty: no pixel reaches half of full scale (largest value {_full_scale_max(image)})"
            )
    mask_size = (mask.shape[1], mask.shape[0])
    if size is None or tuple(size) == mask_size:
        return mask
    if not aspect_ratios_match(mask_size, tuple(size)):
        raise InputError(
            name,
            f"mask size {mask_size[0]}x{mask_size[1]} has a different aspect ratio than the image size {size[0]}x{size[1]}",
        )
    resized = resize_mask(mask, size)
    if not resized.any():
        raise InputError(
            name, f"mask becomes empty when resized from {mask_size[0]}x{mask_size[1]} to {size[0]}x{size[1]}"
        )
    return resized


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean (H, W) mask to ``size=(W, H)``."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(tuple(size), Image.Resampling.NEAREST)) >= HALF_8BIT
