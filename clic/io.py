"""Images and masks as users have them, and the way they enter and leave the model.

Images (:func:`load_image`) come back as 8-bit RGB PIL images, whatever the file holds: RGB, RGBA and LA
(composited on white), palette images (with or without transparency), grayscale, 1-bit, 16-bit
grayscale or colour (scaled to 8 bits: v16 / 257, rounded), CMYK. EXIF orientation is applied.

Masks (:func:`load_mask`, from :mod:`clic.mask_files`) come back as boolean (H, W) arrays; the threshold rule
is in that module's docstring.

Every failure is an :class:`InputError` whose message is one line naming the file and the problem.

Large images: above PIL's decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``, ~89 Mpx) an image is
decoded with a one-line note on stderr, shown once per process, instead of PIL's multi-line warning; above
twice that it is refused ("image too large").

The non-square policy: the model sees square inputs. :func:`to_model_input` pads the image to a square
(centred, padding white; the mask pads with 0, i.e. outside the region) and resizes it to the model
resolution R (bicubic with antialiasing for the image, nearest for the mask). Nothing is cropped, so the
whole image stays editable context and the region keeps its shape. The :class:`Placement` it returns
records the original size and where the image sits in the square; :func:`from_model_output` and
:func:`mask_from_model_output` cut that box out of a model-resolution output and resize it back to the
user's original size, so every saved output has the size of the image it came from.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .image_files import (  # noqa: F401
    ALPHA_MODES,
    FULL_16BIT,
    INT16_MODES,
    ImageSource,
    InputError,
    decode_image,
    decode_problem,
    display_name,
    exif_orientation,
    open_image,
    oriented,
    oriented_size,
)
from .mask_files import ASPECT_TOLERANCE, aspect_ratios_match, load_mask, mask_from_pil, resize_mask  # noqa: F401

if TYPE_CHECKING:  # torch is imported only where tensors are made, so `clic-bench validate` stays light
    import torch


# ------------------------------------------------------------------------------------------- images


def probe_image(source: ImageSource, *, name: str | None = None) -> tuple[int, int]:
    """(W, H) as displayed (EXIF orientation applied), after a cheap integrity check.

    Cheaper than :func:`load_image` by an order of magnitude: PNGs are checked by their chunk CRCs
    (which finds truncation and corruption without inflating pixels), JPEGs are decoded at 1/8 scale;
    other formats are decoded in full.
    """
    name = display_name(source, name)
    image = open_image(source, name)
    size = oriented_size(image.size, exif_orientation(image))
    try:
        if image.format == "PNG":
            image.verify()
        elif image.format in ("JPEG", "MPO"):  # MPO: phones' multi-picture JPEGs
            image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            image.load()
        else:
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(name, decode_problem(err)) from None
    finally:
        image.close()
    return size


def load_image(source: ImageSource, *, name: str | None = None) -> Image.Image:
    """Any image file as an 8-bit RGB PIL image (see the module docstring for the modes handled)."""
    name = display_name(source, name)
    with open_image(source, name) as opened:
        orientation = exif_orientation(opened)
        frames = getattr(opened, "n_frames", 1)
        decode_image(opened, name)
        rgb = to_rgb(opened, name=name)
    if frames > 1:
        _note_once(name, f"{opened.format or 'the'} image has {frames} frames (animated); the first frame is used")
    return oriented(rgb, orientation)


# Files a note was given for (an animated image, a tiny image blown up): said once per file and process.
_NOTED: set[tuple[str, str]] = set()
# Upscaling beyond this factor makes the model see a few pixels as blurred blocks: worth a note.
UPSCALE_NOTE_FACTOR = 8


def _note_once(name: str, text: str) -> None:
    key = (name, text.split(";")[0])
    if key in _NOTED:
        return
    _NOTED.add(key)
    print(f"note: {name}: {text}", file=sys.stderr)


def to_rgb(image: Image.Image, *, name: str = "image") -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode; transparency is composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in INT16_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > FULL_16BIT:
            raise InputError(name, f"{mode} image values outside 0..{FULL_16BIT}")
        gray = ((values * 255 + FULL_16BIT // 2) // FULL_16BIT).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values.min() < 0.0 or values.max() > 1.0:
            raise InputError(name, "float image values outside [0, 1]")
        return Image.fromarray(np.round(values * 255).astype(np.uint8)).convert("RGB")
    has_alpha = mode in ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


# ---------------------------------------------------------------------------------------- model I/O


@dataclass(frozen=True)
class Placement:
    """Where a user's image sits inside the square the model sees (see the module docstring)."""

    original_size: tuple[int, int]  # (W, H) of the user's image
    square_size: int  # side of the padded square, in original pixels
    pad_box: tuple[int, int, int, int]  # (left, top, right, bottom) of the image inside the square
    resolution: int  # R, the side of the model input

    @classmethod
    def for_size(cls, size: tuple[int, int], resolution: int) -> Placement:
        width, height = size
        side = max(width, height)
        left, top = (side - width) // 2, (side - height) // 2
        return cls((width, height), side, (left, top, left + width, top + height), resolution)

    def box_at(self, side: int) -> tuple[float, float, float, float]:
        """The pad box in the coordinates of a square output of ``side`` pixels."""
        scale = side / self.square_size
        return tuple(value * scale for value in self.pad_box)  # type: ignore[return-value]


def to_model_input(
    image: Image.Image, mask: np.ndarray | None, resolution: int, *, name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, Placement]:
    """(image (3, R, R) float32 in [-1, 1], mask (1, R, R) float32 in {0, 1} or None, placement).

    With ``name`` (the file the image came from), an image blown up more than ``UPSCALE_NOTE_FACTOR`` times
    (a 1x1 image at 64 px) gets a one-line note on stderr, once per file."""
    import torch

    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    rgb = to_rgb(image)
    if name is not None and max(rgb.size) * UPSCALE_NOTE_FACTOR < resolution:
        _note_once(
            name,
            f"{rgb.size[0]}x{rgb.size[1]} px, upscaled {resolution / max(rgb.size):.0f}x to the model's "
            f"{resolution}x{resolution}; its detail is what the model sees",
        )
    placement = Placement.for_size(rgb.size, resolution)
    square = Image.new("RGB", (placement.square_size,) * 2, (255, 255, 255))
    square.paste(rgb, placement.pad_box[:2])
    # PIL's bicubic widens its kernel when downscaling, i.e. it antialiases.
    resized = np.asarray(square.resize((resolution, resolution), Image.Resampling.BICUBIC), dtype=np.float32)
    image_tensor = torch.from_numpy(resized / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    if mask is None:
        return image_tensor, None, placement
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (rgb.size[1], rgb.size[0]):
        raise ValueError(f"mask shape {mask.shape} does not match the image size {rgb.size[0]}x{rgb.size[1]} (W x H)")
    square_mask = np.zeros((placement.square_size,) * 2, dtype=bool)
    left, top, right, bottom = placement.pad_box
    square_mask[top:bottom, left:right] = mask
    mask_tensor = torch.from_numpy(resize_mask(square_mask, (resolution, resolution)).astype(np.float32))[None]
    return image_tensor, mask_tensor, placement


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, recognised without importing torch
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


def image_to_uint8(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 array from a PIL image, a uint8/float HWC numpy array, or a CHW torch tensor.

    Float inputs must lie in [0, 1] (clic's outputs and the metrics' images do); model tensors in
    [-1, 1] are refused rather than guessed at.
    """
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    is_tensor = hasattr(image, "detach")
    array = _as_numpy(image)
    if is_tensor:
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(array.shape)}")
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected uint8 or float values in [0, 1], got dtype {array.dtype}")
    low, high = float(array.min()), float(array.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"expected float values in [0, 1], found [{low:.3g}, {high:.3g}]; convert model tensors in [-1, 1] with (x + 1) / 2"
        )
    return np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)


def from_model_output(image: Any, placement: Placement) -> Image.Image:
    """A square model output (see :func:`image_to_uint8` for the accepted forms) at the user's original size."""
    pixels = image_to_uint8(image)
    height, width = pixels.shape[:2]
    if height != width:
        raise ValueError(f"expected a square model output, got {width}x{height}")
    square = Image.fromarray(pixels)
    return square.resize(placement.original_size, Image.Resampling.BICUBIC, box=placement.box_at(width))


def mask_from_model_output(mask: Any, placement: Placement) -> np.ndarray:
    """A square (R, R) or (1, R, R) mask (bool, or float thresholded at 0.5) as a bool array at the original size."""
    values = _as_numpy(mask)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"expected a square (R, R) mask, got shape {tuple(values.shape)}")
    square = Image.fromarray(values.astype(np.float32))
    resized = square.resize(placement.original_size, Image.Resampling.NEAREST, box=placement.box_at(values.shape[0]))
    return np.asarray(resized) >= 0.5


# ------------------------------------------------------------------------------------------- saving


def save_mask_png(mask: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a boolean (H, W) mask as an 8-bit L PNG with values 0 and 255."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(bool).astype(np.uint8) * 255).save(path, format="PNG")
    return path


def save_image(image: Any, path: str | os.PathLike[str]) -> Path:
    """Write an image (PIL, HWC uint8/float [0, 1] array, or CHW [0, 1] tensor); format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image_to_uint8(image))
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
    picture.save(path, **options)
    return path
