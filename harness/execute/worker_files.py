"""A worker's files: manifest images and masks read from a path or a URI, and artifacts (PNGs, maps) written
atomically under the run folder's ``artifacts/<job id>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import store


def readable(location: str):
    """A manifest location as ``clic.io`` reads it: a local path as it is, a URI (``s3://`` …) as its bytes
    (harness.plan.locations: bounded in time and size, one line when the scheme's package is missing)."""
    from ..plan.locations import is_uri, open_location

    return open_location(location) if is_uri(location) else location


def load_image(location: str):
    """A manifest image (a path or a URI), named by its location in errors."""
    from clic.io import load_image as load

    return load(readable(location), name=location)


def load_mask(location: str, size: tuple[int, int] | None = None):
    """A manifest mask (a path or a URI), resized to ``size`` if given."""
    from clic.io import load_mask as load

    return load(readable(location), size=size, name=location)


def load_model_input(image_path: str, mask_path: str | None, resolution: int):
    """The image, its mask and their model input (tensors and placement) at ``resolution``."""
    from clic.io import to_model_input

    image = load_image(image_path)
    mask = load_mask(mask_path, size=image.size) if mask_path else None
    return image, mask, to_model_input(image, mask, resolution)


def as_float_image(image) -> np.ndarray:
    """A PIL image as float32 RGB in [0, 1], as metrics read it."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def save_png(image, path: Path) -> None:
    """Write a PIL image atomically: a killed or retried worker never leaves a half PNG under the real name,
    and a rerun of the job replaces the file whole."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    store.write_bytes_atomic(path, buffer.getvalue())


def save_map(array: np.ndarray, path: Path) -> None:
    """A float map (attention) as a grey PNG scaled to its maximum."""
    from PIL import Image

    array = np.asarray(array, dtype=np.float32)
    if array.max() > 0:
        array = array / array.max()
    save_png(Image.fromarray((array.clip(0, 1) * 255).round().astype(np.uint8), mode="L"), path)


def map_at_original_size(values: np.ndarray, placement: Any) -> np.ndarray:
    """A square float map at model resolution, resized (bilinear) to the image's original size as the edited
    image is (:func:`clic.io.from_model_output`)."""
    from PIL import Image

    square = Image.fromarray(np.asarray(values, dtype=np.float32))
    resized = square.resize(placement.original_size, Image.Resampling.BILINEAR, box=placement.box_at(values.shape[0]))
    return np.asarray(resized, dtype=np.float32)


def generated_images(run_dir: str | Path, job_id: str) -> list[Path]:
    """A finished generate job's images, in order."""
    folder = store.artifact_dir(run_dir, job_id)
    paths = []
    while (folder / store.generated_image_name(len(paths))).is_file():
        paths.append(folder / store.generated_image_name(len(paths)))
    return paths
