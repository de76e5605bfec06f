"""Region helpers shared by the metrics: checked inputs, mask resizing, crops, grey fills, tensors.

Images are float (H, W, 3) arrays in [0, 1] and masks bool (H, W) arrays, as ``base`` asserts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import Sample, check_image, check_mask

NEUTRAL_GREY = 0.5  # fill of masked-out regions: mid-range, 0 after LPIPS' [-1, 1] mapping
# A generated object's mask (no segmentation model is available offline): pixels whose CIELAB colour is farther
# than this from the median colour of the image's border ring are the object.
OBJECT_DELTA_E = 12.0
BORDER_RING = 2  # pixels of the border ring that estimate the background colour


def sample_image(sample: Sample, field: str) -> np.ndarray | None:
    """``sample.<field>`` checked as a [0, 1] float image, or None when absent."""
    value = getattr(sample, field)
    return None if value is None else check_image(value, f"{sample.job_id}: {field}")


def sample_mask(sample: Sample, field: str) -> np.ndarray | None:
    """``sample.<field>`` checked as a bool mask, or None when absent."""
    value = getattr(sample, field)
    return None if value is None else check_mask(value, f"{sample.job_id}: {field}")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize of an (H, W, 3) image to ``size`` = (H, W)."""
    if image.shape[:2] == tuple(size):
        return image
    resized = F.interpolate(to_tensor([image]), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).clamp(0, 1).numpy()


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``size`` = (H, W) (pixel centres, like PIL's NEAREST)."""
    if mask.shape == tuple(size):
        return mask
    rows = np.minimum(((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def crop_to_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The bounding-box crop of ``mask`` (resized to the image if needed) on ``image``; None if the mask is empty."""
    mask = resize_mask(mask, image.shape[:2])
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fill_region(image: np.ndarray, mask: np.ndarray, value: float = NEUTRAL_GREY) -> np.ndarray:
    """A copy of ``image`` with the pixels under ``mask`` set to ``value``."""
    filled = image.copy()
    filled[mask] = value
    return filled


def pad_to_square(image: np.ndarray, value: float = NEUTRAL_GREY) -> np.ndarray:
    """Centre ``image`` on a square canvas of ``value`` so a later square resize keeps its aspect ratio."""
    height, width = image.shape[:2]
    side = max(height, width)
    if height == width:
        return image
    canvas = np.full((side, side, 3), value, dtype=image.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = image
    return canvas


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack same-sized (H, W, 3) images into an (N, 3, H, W) float32 tensor (values unchanged)."""
    return torch.from_numpy(np.stack(images).astype(np.float32, copy=False)).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class TransferView:
    """Target, output and target mask of a transfer, all at the target's resolution."""

    target: np.ndarray
    output: np.ndarray
    mask: np.ndarray  # True inside the edited region

    @property
    def outside(self) -> np.ndarray:
        return ~self.mask


def transfer_view(sample: Sample) -> TransferView | None:
    """The checked, aligned transfer inputs of ``sample``; None when any of them is missing.

    A method may return a different resolution than the target it edited (e.g. SD's 512 px): the output
    is resized to the target and the mask to the target, so every comparison is at the target's pixels.
    """
    target = sample_image(sample, "target_image")
    output = sample_image(sample, "output_image")
    mask = sample_mask(sample, "target_mask")
    if target is None or output is None or mask is None:
        return None
    size = target.shape[:2]
    return TransferView(target=target, output=resize_image(output, size), mask=resize_mask(mask, size))


def concept_pair(
    sample: Sample,
    crop: Callable[[np.ndarray, np.ndarray], np.ndarray | None] = crop_to_mask,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(source's concept region, output's edited region), each cut from its image by ``crop`` with its own
    mask (source mask, target mask); None when an input is missing or a region is empty."""
    source, source_mask = sample_image(sample, "source_image"), sample_mask(sample, "source_mask")
    output, target_mask = sample_image(sample, "output_image"), sample_mask(sample, "target_mask")
    if source is None or source_mask is None or output is None or target_mask is None:
        return None
    source_region, output_region = crop(source, source_mask), crop(output, target_mask)
    if source_region is None or output_region is None:
        return None
    return source_region, output_region


def generated_object_mask(image: np.ndarray) -> np.ndarray | None:
    """The generated object of an (H, W, 3) image as a bool mask; None when nothing stands out.

    Our rule (SingleInsert segments its generations with a model; none is available offline): the background is
    the median colour of the outer :data:`BORDER_RING` pixels, and a pixel belongs to the object when its CIELAB
    distance to that colour exceeds :data:`OBJECT_DELTA_E`. Exact for an object on a plain background (the shipped
    synthetic sets, product photos); a cluttered background makes it over-segment.
    """
    from skimage.color import rgb2lab

    lab = rgb2lab(image.astype(np.float64))
    ring = np.ones(image.shape[:2], dtype=bool)
    ring[BORDER_RING:-BORDER_RING, BORDER_RING:-BORDER_RING] = False
    background = np.median(lab[ring], axis=0)
    mask = np.sqrt(((lab - background) ** 2).sum(-1)) > OBJECT_DELTA_E
    return mask if mask.any() else None


def generation_view(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(source, source mask, generation, generated object mask) of a generation; None if any is missing/empty."""
    if sample.task != "generate":
        return None
    source, source_mask = sample_image(sample, "source_image"), sample_mask(sample, "source_mask")
    output = sample_image(sample, "output_image")
    if source is None or source_mask is None or output is None:
        return None
    source_mask = resize_mask(source_mask, source.shape[:2])
    object_mask = generated_object_mask(output)
    if object_mask is None or not source_mask.any():
        return None
    return source, source_mask, output, object_mask


def outside_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """Target and output with the edited region greyed out in both; None if missing or nothing is outside."""
    view = transfer_view(sample)
    if view is None or not view.outside.any():
        return None
    return fill_region(view.target, view.mask), fill_region(view.output, view.mask)
