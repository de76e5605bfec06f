"""A fully connected (dense) CRF with Gaussian edge potentials, mean-field inference in torch.

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials"
(NeurIPS 2011): labels l ∈ {0..L−1} per pixel, unary ψ_u = −log P(l), Potts compatibility, and the pairwise
kernel

    k(i, j) = w_app · exp(−|p_i − p_j|²/2θ_α² − |I_i − I_j|²/2θ_β²)     (appearance: position + colour)
            + w_smooth · exp(−|p_i − p_j|²/2θ_γ²)                        (smoothness: position only)

Mean field: Q ← softmax(log P + Σ_j k(i, j) Q_j), j ≠ i (Potts: each label is rewarded by the mass its
neighbours give it). Instead of the paper's permutohedral lattice we build the N×N kernel explicitly at a
small working side (``max_side``, default 64 → 4096² floats, 64 MB) and resize in and out: exact, simple,
and cheap at the resolutions the masks are estimated at (attention maps are 16–64 px). ``pydensecrf2``
ships only a source distribution for this Python: it builds here (Cython + a C++ compiler), but would need
a toolchain on every cluster node for ~60 lines of maths, so we keep this torch version instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DenseCRFSettings:
    # Kernel widths are given relative to the image side (positions) and to [0, 1] colours, so the same
    # settings mean the same thing at any working resolution. Defaults: pydensecrf's addPairwiseBilateral
    # (sxy=80, srgb=13 on 0–255 colours, compat=10) and addPairwiseGaussian (sxy=3, compat=3), with sxy
    # rescaled from a ~500 px image to a fraction of the side.
    appearance_weight: float = 10.0
    appearance_position: float = 80 / 500  # θ_α as a fraction of the side
    appearance_colour: float = 13 / 255  # θ_β in [0, 1] colour units
    smoothness_weight: float = 3.0
    smoothness_position: float = 3 / 500  # θ_γ as a fraction of the side (at least one pixel)
    iterations: int = 5
    max_side: int = 64  # working resolution of the explicit N×N kernel
    # True: θ_α and θ_γ are pixels of the *input* image (pydensecrf's sxy, as CutLER passes them), rescaled to
    # the working resolution; False: fractions of the side.
    positions_in_pixels: bool = False
    # Unary of refine_masks: "ramp" (confidence 0.55–0.95 by distance from the threshold) or "softmax" (CutLER's
    # crf.py: unary_from_softmax(softmax of the one-hot binary masks), e/(e + n) on the mask's label).
    unary: str = "ramp"


# CutLER's crf.py (facebookresearch/CutLER, maskcut/crf.py L11-16): MAX_ITER 10, POS_W 7, POS_XY_STD 3, Bi_W 10,
# Bi_XY_STD 50, Bi_RGB_STD 5 (0–255 colours), unary from the softmax of the binary masks.
CUTLER = DenseCRFSettings(
    appearance_weight=10.0,
    appearance_position=50.0,
    appearance_colour=5 / 255,
    smoothness_weight=7.0,
    smoothness_position=3.0,
    iterations=10,
    positions_in_pixels=True,
    unary="softmax",
)


def dense_kernel(image: torch.Tensor, settings: DenseCRFSettings, input_side: int | None = None) -> torch.Tensor:
    """The (N, N) pairwise kernel of an image (3, H, W) in [0, 1], zero on the diagonal (no self-message).
    ``input_side``: the side of the image the pixel-valued θ refer to (``positions_in_pixels``)."""
    _, height, width = image.shape
    side = max(height, width)
    if settings.positions_in_pixels:  # θ in input pixels -> working pixels; "× side" below undoes the division
        side = side / (input_side or side)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    positions = torch.stack([ys.flatten(), xs.flatten()], dim=1)  # (N, 2) pixels
    colours = image.reshape(3, -1).T.float()  # (N, 3)
    theta_alpha = settings.appearance_position * side
    theta_gamma = max(settings.smoothness_position * side, 1.0)
    appearance = torch.cat([positions / theta_alpha, colours / settings.appearance_colour], dim=1)
    kernel = settings.appearance_weight * torch.exp(-0.5 * torch.cdist(appearance, appearance).square())
    kernel += settings.smoothness_weight * torch.exp(
        -0.5 * torch.cdist(positions / theta_gamma, positions / theta_gamma).square()
    )
    kernel.fill_diagonal_(0.0)
    return kernel


@torch.no_grad()
def dense_crf(
    image: torch.Tensor, probabilities: torch.Tensor, settings: DenseCRFSettings = DenseCRFSettings()
) -> torch.Tensor:
    """Refined label marginals (L, H, W) from unary probabilities (L, H, W) (summing to 1 over L) and the
    image (3, H, W) in [0, 1]. Runs at ``settings.max_side`` at most and returns at the input size."""
    if image.shape[-2:] != probabilities.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and probabilities {tuple(probabilities.shape)} differ in size")
    size = probabilities.shape[-2:]
    scale = min(1.0, settings.max_side / max(size))
    work = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    image_w = F.interpolate(image[None].float(), size=work, mode="area")[0] if work != tuple(size) else image.float()
    probs_w = (
        F.interpolate(probabilities[None].float(), size=work, mode="area")[0]
        if work != tuple(size)
        else probabilities.float()
    )
    labels = probs_w.shape[0]
    log_unary = probs_w.clamp_min(1e-6).log().reshape(labels, -1)  # −ψ_u
    kernel = dense_kernel(image_w, settings, max(size))
    q = log_unary.softmax(dim=0)
    for _ in range(settings.iterations):
        q = (log_unary + q @ kernel).softmax(dim=0)  # kernel is symmetric: (Q K)_l,i = Σ_j k(i, j) Q_j(l)
    q = q.reshape(labels, *work)
    if work != tuple(size):
        q = F.interpolate(q[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return q


def refine_masks(
    image: torch.Tensor, soft_maps: torch.Tensor, threshold: float, settings: DenseCRFSettings = DenseCRFSettings()
) -> torch.Tensor:
    """Binary masks (n, H, W) from soft maps (n, H, W) in [0, 1] of n concepts on one image.

    Each map is binarised at ``threshold`` (a pixel above it for several concepts goes to the highest
    map); the unary puts probability c on that label and spreads 1 − c over the others, with c from 0.55
    (soft value at the threshold: the CRF decides) to 0.95 (half a unit away). The CRF's MAP labels are the
    masks; a concept the CRF empties keeps its thresholded mask (the losses need a region).
    """
    count = soft_maps.shape[0]
    winner = soft_maps.argmax(dim=0)
    hard = torch.stack([(winner == k) & (soft_maps[k] >= threshold) for k in range(count)]).float()
    background = 1.0 - hard.amax(dim=0, keepdim=True)
    onehot = torch.cat([background, hard])  # (n + 1, H, W)
    # Confidence grows with distance from the threshold: near-threshold pixels are the CRF's to decide.
    if settings.unary == "softmax":  # CutLER: softmax over the labels of the one-hot masks
        probabilities = onehot.softmax(dim=0)
    else:
        margin = (soft_maps.amax(dim=0, keepdim=True) - threshold).abs().clamp(max=0.5) * 2  # [0, 1]
        confidence = 0.55 + 0.4 * margin
        probabilities = onehot * confidence + (1 - onehot) * (1 - confidence) / count
    labels = dense_crf(image, probabilities / probabilities.sum(0, keepdim=True), settings).argmax(dim=0)
    refined = torch.stack([(labels == k + 1).float() for k in range(count)])
    empty = refined.flatten(1).sum(1) == 0
    refined[empty] = hard[empty]
    return refined
