"""IoU of a predicted RoI mask (RoI matching) against the ground-truth target mask."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ._regions import resize_mask
from .base import ClosedFormMetric, MetricValue, Sample, check_mask

SOFT_MASK_THRESHOLD = 0.5  # a float soft map counts a pixel as predicted where its value is >= this
EMPTY_UNION_IOU = 1.0  # both masks empty: the prediction is exactly right


def binary_prediction(mask: np.ndarray, what: str = "predicted_mask") -> np.ndarray:
    """A bool mask as is; a float (H, W) soft map in [0, 1] thresholded at ``SOFT_MASK_THRESHOLD``."""
    if isinstance(mask, np.ndarray) and mask.ndim == 2 and np.issubdtype(mask.dtype, np.floating):
        low, high = float(mask.min()), float(mask.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"{what}: a soft mask must lie in [0, 1], found [{low:.3g}, {high:.3g}]")
        return mask >= SOFT_MASK_THRESHOLD
    return check_mask(mask, what)


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, int, int]:
    """(IoU, intersection, union) of two bool masks of one size; ``EMPTY_UNION_IOU`` when both are empty.
    The one IoU of the harness (RoI matching, estimated source masks)."""
    intersection = int(np.count_nonzero(predicted & truth))
    union = int(np.count_nonzero(predicted | truth))
    return (intersection / union if union else EMPTY_UNION_IOU), intersection, union


class MaskIoU(ClosedFormMetric):
    """ "mask_iou" = |P & G| / |P | G| with ``EMPTY_UNION_IOU`` when both are empty, plus the pixel counts
    "mask_intersection" and "mask_union" so the aggregator can pool IoU over a set as sum(I) / sum(U).
    The prediction is resized (nearest) to the ground truth's size when they differ.
    """

    name: ClassVar[str] = "mask_iou"
    values: ClassVar[dict[str, bool]] = {"mask_iou": True, "mask_intersection": True, "mask_union": True}
    version: ClassVar[str] = "1.0"
    scale: ClassVar[str] = "IoU in [0, 1] (1 = identical masks); intersection/union in pixels of the gt mask"
    tasks: ClassVar[frozenset[str]] = frozenset({"match"})

    @staticmethod
    def _score(sample: Sample) -> list[MetricValue]:
        if sample.predicted_mask is None or sample.gt_mask is None:
            return []
        truth = check_mask(sample.gt_mask, f"{sample.job_id}: gt_mask")
        predicted = resize_mask(
            binary_prediction(sample.predicted_mask, f"{sample.job_id}: predicted_mask"), truth.shape
        )
        iou, intersection, union = mask_iou(predicted, truth)
        return [
            MetricValue("mask_iou", iou),
            MetricValue("mask_intersection", float(intersection)),
            MetricValue("mask_union", float(union)),
        ]
