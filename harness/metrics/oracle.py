"""Oracle metrics: scores only a synthetic set can give, because it knows the exact expected image.

All three compare the method's output with the set's ground truth inside or outside the target RoI
(``gt_mask``, else ``target_mask``). They are analytic (no model), need ``output_image``,
``expected_image`` and ``target_image`` of the same size as the RoI, and score nothing (an empty list)
for a sample without them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy import ndimage

from .base import ClosedFormMetric, MetricValue, Sample, check_image, check_mask

ANALYTIC = "none (analytic)"
BORDER_PX = 2  # pixels around the RoI boundary left out: anti-aliasing and mask imprecision live there


def _roi(sample: Sample) -> np.ndarray | None:
    mask = sample.gt_mask if sample.gt_mask is not None else sample.target_mask
    return None if mask is None else check_mask(mask, "gt_mask" if sample.gt_mask is not None else "target_mask")


def _inputs(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(output, expected, target, roi) checked and of one size, or None when the sample lacks any."""
    roi = _roi(sample)
    if sample.output_image is None or sample.expected_image is None or sample.target_image is None or roi is None:
        return None
    output = check_image(sample.output_image, "output_image")
    expected = check_image(sample.expected_image, "expected_image")
    target = check_image(sample.target_image, "target_image")
    for what, image in (("output_image", output), ("expected_image", expected), ("target_image", target)):
        if image.shape[:2] != roi.shape:
            raise ValueError(f"{what}: size {image.shape[:2]} differs from the RoI mask's {roi.shape}")
    return output, expected, target, roi


def _outside(roi: np.ndarray) -> np.ndarray:
    return ~ndimage.binary_dilation(roi, iterations=BORDER_PX)


def _principal_signal(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Colours projected on their principal axis within ``weights`` (mean removed): a scalar image in
    which any two-colour pattern shows at full contrast, whatever its colours (even equal luminance)."""
    total = weights.sum()
    mean = (image * weights[..., None]).sum(axis=(0, 1)) / total
    centred = image - mean
    covariance = np.einsum("hwc,hwd,hw->cd", centred, centred, weights) / total
    axis = np.linalg.eigh(covariance)[1][:, -1]
    return (centred @ axis) * (weights > 0)


class PatternFidelity(ClosedFormMetric):
    """How well the pattern drawn inside the target RoI matches the expected one, whatever its colours.

    Method: the change a method made inside the RoI (output − target) is compared with the change the
    ground truth makes (expected − target), so the part's own edges and shading cancel out. Within the
    RoI shrunk by BORDER_PX and tapered over TAPER_PX (a soft window, so the RoI's outline does not
    dominate) each change is projected on its own principal colour axis and high-passed (shading
    removed). Its power spectrum is pooled into ORIENTATIONS x RADII orientation x log-frequency bins,
    from one period per RoI extent to Nyquist, and the score is the cosine similarity of the two pooled
    spectra. Spectra ignore position and sign, so a shifted pattern or other colours score as the same
    pattern, while another kind, frequency or angle moves energy to other bins. The cosine is scaled by
    min(1, contrast ratio / RELATIVE_CONTRAST), the contrast being the std of the projected change:
    faint structure (noise, a ghost of the pattern) does not count as the pattern.

    Range [0, 1], higher is better: 1 = the expected pattern; 0 = no change in the RoI.
    """

    name: ClassVar[str] = "pattern_fidelity"
    values: ClassVar[dict[str, bool]] = {"pattern_fidelity": True}
    version: ClassVar[str] = "1"
    scale: ClassVar[str] = "[0, 1], higher is better (cosine of pooled pattern spectra in the RoI)"
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})
    weights_label: ClassVar[str] = ANALYTIC

    TAPER_PX: ClassVar[float] = 3.0
    ORIENTATIONS: ClassVar[int] = 12
    RADII: ClassVar[int] = 8
    RELATIVE_CONTRAST: ClassVar[float] = 0.5
    MIN_CONTRAST: ClassVar[float] = 0.02  # the expected change must show at least this much pattern

    def _score(self, sample: Sample) -> list[MetricValue]:
        inputs = _inputs(sample)
        if inputs is None:
            return []
        output, expected, target, roi = inputs
        window = self._window(roi)
        if not window.any():
            return []
        rows, cols = np.nonzero(window)
        crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        window = window[crop]
        reference, reference_contrast = self._pattern(expected[crop] - target[crop], window)
        if reference_contrast < self.MIN_CONTRAST:
            return []  # the ground truth shows no pattern here: nothing to compare against
        candidate, candidate_contrast = self._pattern(output[crop] - target[crop], window)
        if candidate_contrast == 0.0:
            return [MetricValue(self.name, 0.0)]
        cosine = float(candidate @ reference / (np.linalg.norm(candidate) * np.linalg.norm(reference)))
        strength = min(1.0, candidate_contrast / (self.RELATIVE_CONTRAST * reference_contrast))
        return [MetricValue(self.name, min(max(cosine, 0.0), 1.0) * strength)]

    def _window(self, roi: np.ndarray) -> np.ndarray:
        depth = ndimage.distance_transform_edt(roi)
        return np.clip((depth - BORDER_PX) / self.TAPER_PX, 0.0, 1.0)

    def _pattern(self, change: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, float]:
        """(pooled power spectrum, contrast) of the structure in ``change`` under ``window``."""
        extent = max(window.shape)
        signal = _principal_signal(change.astype(np.float64), window)
        # Remove what varies over more than about a third of the RoI (shading); periods are shorter.
        sigma = extent / (3 * np.pi)
        local_mean = ndimage.gaussian_filter(signal * window, sigma) / np.maximum(
            ndimage.gaussian_filter(window, sigma), 1e-12
        )
        signal = (signal - local_mean) * (window > 0)
        contrast = float(np.sqrt((signal**2 * window).sum() / window.sum()))

        side = 1 << int(np.ceil(np.log2(2 * extent)))  # zero-padded: finer frequency sampling
        power = np.abs(np.fft.rfft2(signal * window, s=(side, side))) ** 2
        fy = np.fft.fftfreq(side)[:, None]
        fx = np.fft.rfftfreq(side)[None, :]
        edges = np.geomspace(1.0 / extent, 0.5 * np.sqrt(2), self.RADII + 1)
        radial_bin = np.searchsorted(edges, np.hypot(fx, fy), side="right") - 1
        orientation = np.mod(np.arctan2(fy, fx), np.pi)
        angle_bin = np.minimum((orientation / np.pi * self.ORIENTATIONS).astype(int), self.ORIENTATIONS - 1)
        valid = (radial_bin >= 0) & (radial_bin < self.RADII)
        pooled = np.bincount(
            (radial_bin * self.ORIENTATIONS + angle_bin)[valid],
            weights=power[valid],
            minlength=self.RADII * self.ORIENTATIONS,
        )
        if pooled.sum() <= 0.0:  # all structure below one period per RoI: nothing pattern-like
            contrast = 0.0
        return pooled, contrast


class PatternLeakage(ClosedFormMetric):
    """How much pattern the method drew outside the target RoI.

    Method: an image's local high-frequency energy is its high-pass (minus its Gaussian blur of
    SIGMA_PX, blurring only within the region scored, so the edit inside does not bleed across the RoI
    boundary) squared and averaged locally (Gaussian, LOCAL_PX). New structure is the local energy an
    image has beyond the target's own; comparing energies, not the energy of the difference, keeps a
    softened or slightly shifted edge of the target from counting. The yardstick is the pattern: the
    expected image's new structure inside the RoI, with mean strength S and total E_ref. Outside the
    RoI dilated by BORDER_PX, the output's new structure counts where it reaches GATE x S (so faint
    noise does not), summing to E_out. Leakage = E_out / (E_out + E_ref): 0 = no pattern-strength
    structure appeared outside, 0.5 = as much outside as belongs inside, → 1 = pattern far beyond the
    RoI. Smooth changes (a colour cast) and lost structure are not leakage; oracle_preservation sees
    those.

    Range [0, 1], lower is better.
    """

    name: ClassVar[str] = "pattern_leakage"
    values: ClassVar[dict[str, bool]] = {"pattern_leakage": False}
    version: ClassVar[str] = "1"
    scale: ClassVar[str] = "[0, 1], lower is better (share of pattern-strength change outside the RoI)"
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})
    weights_label: ClassVar[str] = ANALYTIC

    SIGMA_PX: ClassVar[float] = 3.0
    LOCAL_PX: ClassVar[float] = 3.0
    GATE: ClassVar[float] = 0.25

    def _score(self, sample: Sample) -> list[MetricValue]:
        inputs = _inputs(sample)
        if inputs is None:
            return []
        output, expected, target, roi = inputs
        pattern = self._new_structure(expected, target, roi)
        pattern_total = float(pattern[roi].sum())
        if pattern_total <= 0.0:
            return []  # the ground truth adds no pattern: leakage has no yardstick
        outside = _outside(roi)
        new_structure = self._new_structure(output, target, outside)
        leaked = outside & (new_structure >= self.GATE * float(pattern[roi].mean()))
        leaked_total = float(new_structure[leaked].sum())
        return [MetricValue(self.name, leaked_total / (leaked_total + pattern_total))]

    def _new_structure(self, image: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
        """Local high-frequency energy ``image`` has beyond the target's own, within ``region``.

        Comparing energies rather than taking the energy of the difference keeps a softened or
        slightly shifted edge of the target from counting as new structure."""
        return np.maximum(self._local_energy(image, region) - self._local_energy(target, region), 0.0)

    def _local_energy(self, image: np.ndarray, region: np.ndarray) -> np.ndarray:
        """Locally averaged squared high-pass of ``image`` within ``region`` (zero elsewhere)."""
        if not region.any():
            return np.zeros(region.shape)
        weight = region.astype(np.float64)
        energy = np.zeros(region.shape)
        for channel in np.moveaxis(image.astype(np.float64), -1, 0):
            energy += (channel - self._region_blur(channel, weight, self.SIGMA_PX)) ** 2
        return self._region_blur(energy, weight, self.LOCAL_PX) * weight

    @staticmethod
    def _region_blur(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur that only averages over the region (normalised convolution)."""
        blurred_weight = np.maximum(ndimage.gaussian_filter(weight, sigma), 1e-12)
        return ndimage.gaussian_filter(values * weight, sigma) / blurred_weight


class OraclePreservation(ClosedFormMetric):
    """How untouched the image stays outside the target RoI.

    Method: 1 − mean absolute difference between output and target over RGB and over the pixels outside
    the RoI dilated by BORDER_PX (outside the RoI the expected image is the target). Any change counts:
    structure, colour casts, blur.

    Range [0, 1], higher is better: 1 = identical outside the RoI.
    """

    name: ClassVar[str] = "oracle_preservation"
    values: ClassVar[dict[str, bool]] = {"oracle_preservation": True}
    version: ClassVar[str] = "1"
    scale: ClassVar[str] = "[0, 1], higher is better (1 - mean abs error outside the RoI)"
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})
    weights_label: ClassVar[str] = ANALYTIC

    def _score(self, sample: Sample) -> list[MetricValue]:
        inputs = _inputs(sample)
        if inputs is None:
            return []
        output, _, target, roi = inputs
        outside = _outside(roi)
        if not outside.any():
            return []
        error = float(np.abs(output[outside] - target[outside]).mean())
        return [MetricValue(self.name, 1.0 - error)]
