"""SSIM and PSNR of the target vs the output over the pixels outside the edited mask (preservation)."""

from __future__ import annotations

import math
from importlib.metadata import version as package_version
from typing import ClassVar

import numpy as np
from skimage.metrics import structural_similarity

from ._regions import fill_region, transfer_view
from .base import ClosedFormMetric, MetricValue, Sample

PSNR_CAP_DB = 100.0  # identical outsides give MSE 0 (PSNR +inf); tables get this finite ceiling instead


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for data range 1, capped at ``PSNR_CAP_DB``."""
    return PSNR_CAP_DB if mse <= 0 else min(PSNR_CAP_DB, -10.0 * math.log10(mse))


class SsimPsnrOutside(ClosedFormMetric):
    """ "ssim_outside": mean of skimage's SSIM map (data_range 1, 7x7 window, channels averaged) over the
    outside pixels, computed with the masked region filled with the same grey in both images so an edit
    cannot reach the outside score through the window. "psnr_outside": PSNR (data range 1) of the MSE over
    the outside pixels only, capped at ``PSNR_CAP_DB``. No values when the mask covers the whole image.
    """

    name: ClassVar[str] = "ssim_psnr"
    values: ClassVar[dict[str, bool]] = {"ssim_outside": True, "psnr_outside": True}
    version: ClassVar[str] = f"1.0+scikit-image-{package_version('scikit-image')}"
    scale: ClassVar[str] = f"SSIM in [-1, 1] (1 = identical); PSNR in dB, capped at {PSNR_CAP_DB:g}"
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})

    @staticmethod
    def _score(sample: Sample) -> list[MetricValue]:
        view = transfer_view(sample)
        if view is None or not view.outside.any():
            return []
        _, ssim_map = structural_similarity(
            fill_region(view.target, view.mask),
            fill_region(view.output, view.mask),
            data_range=1.0,
            channel_axis=-1,
            full=True,
        )
        difference = view.target[view.outside].astype(np.float64) - view.output[view.outside]
        return [
            MetricValue("ssim_outside", float(ssim_map[view.outside].mean())),
            MetricValue("psnr_outside", psnr_from_mse(float(np.mean(difference**2)))),
        ]
