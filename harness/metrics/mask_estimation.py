"""IoU of the source masks a method *estimated* (EM masks, ConceptExpress concepts, CLiC's automatic source
mask) against the ground-truth source mask of the pair.

The masks arrive in ``Sample.estimated_masks`` (bool, any size: resized nearest to the ground truth's), which
the runner fills from the learned concept's ``arrays`` entries named ``estimated_mask*``; the ground truth is
``Sample.source_mask`` (the manifest's source mask, which the estimating methods do not use). A method that
finds several concepts is scored by its best-matching one: the concept found for the annotated region.
"""

from __future__ import annotations

from typing import ClassVar

from ._regions import resize_mask
from .base import ClosedFormMetric, MetricValue, Sample, check_mask
from .mask_iou import mask_iou


class EstimatedMaskIoU(ClosedFormMetric):
    """ "estimated_mask_iou": max over the estimated masks of IoU with the ground-truth source mask;
    "estimated_mask_count": how many masks the method estimated. Scored on transfer samples (one per
    concept × target; the value depends on the concept only)."""

    name: ClassVar[str] = "estimated_mask_iou"
    values: ClassVar[dict[str, bool]] = {"estimated_mask_iou": True, "estimated_mask_count": True}
    version: ClassVar[str] = "1.0"
    scale: ClassVar[str] = "IoU in [0, 1] (1 = the estimated source mask equals the ground truth); count of masks"
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})

    @staticmethod
    def _score(sample: Sample) -> list[MetricValue]:
        if not sample.estimated_masks or sample.source_mask is None:
            return []
        truth = check_mask(sample.source_mask, f"{sample.job_id}: source_mask")
        best = max(
            mask_iou(resize_mask(check_mask(mask, f"{sample.job_id}: estimated_masks[{index}]"), truth.shape), truth)[0]
            for index, mask in enumerate(sample.estimated_masks)
        )
        return [
            MetricValue("estimated_mask_iou", best),
            MetricValue("estimated_mask_count", float(len(sample.estimated_masks))),
        ]
