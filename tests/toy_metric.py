"""A toy metric defined outside ``harness/metrics/`` (one file, registered by the tests with
``register_metric``): the share of the target mask whose output pixels differ from the target."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from harness.metrics.base import ClosedFormMetric, MetricValue, Sample, check_image, check_mask


class ChangedShare(ClosedFormMetric):
    name: ClassVar[str] = "toy_changed_share"
    version: ClassVar[str] = "1"
    scale: ClassVar[str] = "share of mask pixels [0, 1]"
    values: ClassVar[dict[str, bool]] = {"toy_changed_share": True}
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})

    def _score(self, sample: Sample) -> list[MetricValue]:
        if sample.output_image is None or sample.target_image is None or sample.target_mask is None:
            return []
        output, target = check_image(sample.output_image, "output"), check_image(sample.target_image, "target")
        mask = check_mask(sample.target_mask, "target mask")
        changed = np.abs(output - target).max(axis=2) > 1 / 255
        return [MetricValue(self.name, float(changed[mask].mean()))]
