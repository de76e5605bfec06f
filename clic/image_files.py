"""Opening a user's image file (re-exported by :mod:`clic.io`, which decodes images and masks from it): what cannot
be opened is an :class:`InputError` of one line naming the file; the EXIF orientation is read without decoding
pixels; a large image gets a one-line note (once per process) instead of PIL's multi-line warning.
"""

from __future__ import annotations

import os
import stat
import sys
import warnings
from typing import IO, Union

from PIL import Image, UnidentifiedImageError

ImageSource = Union[str, "os.PathLike[str]", IO[bytes]]
# Pixel formats the image and mask readers share. Half of full scale, rounded up, for integer images: 128 of 255,
# 32768 of 65535.
HALF_8BIT = 128
HALF_16BIT = 32768
FULL_16BIT = 65535
INT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE = {  # EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class InputError(ValueError):
    """A user's image or mask cannot be used. ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = " ".join(problem.split())  # one line, whatever the underlying message was
        super().__init__(f"{source}: {self.problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across Ray workers
        return (type(self), (self.source, self.problem))


def display_name(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


# Large images: PIL warns (a multi-line DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS (~89 Mpx) and
# refuses above twice that. Our policy, in one line each: above the warning size an image is decoded with a
# one-line note on stderr, once per process; above twice it (~179 Mpx) it is refused as "image too large".
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_LARGE_IMAGE_NOTED: list[str] = []


def _note_large_image(image: Image.Image, name: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or image.size[0] * image.size[1] <= limit or _LARGE_IMAGE_NOTED:
        return
    _LARGE_IMAGE_NOTED.append(name)
    width, height = image.size
    print(
        f"note: {name}: {width}x{height} = {width * height / 1e6:.0f} Mpx is a large image (above {limit / 1e6:.0f} Mpx); "
        f"decoding it in full (images above {2 * limit / 1e6:.0f} Mpx are refused; this note is shown once)",
        file=sys.stderr,
    )


def open_image(source: ImageSource, name: str) -> Image.Image:
    """Open (header only) or raise an InputError that says why not."""
    if isinstance(source, (str, os.PathLike)):
        try:
            mode = os.stat(source).st_mode
        except OSError:
            mode = None  # missing, a symlink loop, no permission: Image.open says which below
        if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise InputError(name, "not a regular file (a pipe, socket or device would block or never end)")
    try:
        image = Image.open(source)
        _note_large_image(image, name)
        return image
    except FileNotFoundError:
        raise InputError(name, "file not found") from None
    except IsADirectoryError:
        raise InputError(name, "is a directory, not an image file") from None
    except PermissionError:
        raise InputError(name, "permission denied") from None
    except UnidentifiedImageError:
        raise InputError(name, "not a readable image (unknown format or corrupt header)") from None
    except Image.DecompressionBombError as err:
        raise InputError(name, f"image too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(name, f"unreadable image: {err}") from None


def decode_image(image: Image.Image, name: str) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(name, decode_problem(err)) from None


def decode_problem(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if "truncated" in text.lower():
        return f"truncated image file ({text})"
    return f"corrupt image data ({text})"


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation read without decoding pixels (PNG: only an eXIf chunk before the image data)."""
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        return int(exif.get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a malformed EXIF block must not make a good image unreadable
        return 1


def oriented(image: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
