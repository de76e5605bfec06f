"""LPIPS in the tiny world (``lpips.net: tiny-world``): the LPIPS distance on the world CLIP's image trunk.

No AlexNet ImageNet weights exist here, and a random AlexNet measures nothing; the world scorer
(:mod:`clic.world.scorer`, trained contrastively on the synthetic renders) is the one image network that has
learnt this world's features. The distance is Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric", Eq. 1 with unit weights w_l = 1 -- the paper's "baseline" variant without learned linear
heads (the lpips package's ``LPIPS(lpips=False)``); no heads were calibrated on this trunk:

    d(x, x0) = sum_l  1 / (H_l W_l)  sum_{h,w}  || y_hw^l - y0_hw^l ||_2^2

where y^l are the patch tokens after transformer block l (the output of each residual block, i.e. after its
attention and MLP residuals; the class token dropped), laid out as the ViT's H_l x W_l patch grid (8 x 8 for the
64 px, 8 px-patch scorer) and unit-normalised along channels (lpips' ``normalize_tensor``, eps 1e-10). With
``spatial`` each layer's map is upsampled bilinearly to the input size before the sum (lpips' ``spatial=True``),
the map that :class:`harness.metrics.lpips_metric.LpipsMasked` averages inside and outside the mask.

Inputs are in [-1, 1] as for lpips, resized (bilinear, antialiased, aspect not kept so the map stays aligned
with the pixels) to the scorer's input size and normalised with the scorer's own mean/std
(:func:`clic.world.scorer.to_clip_input`'s formula). The weights label is the tiny-world model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import TINY_RANDOM
from .options import WORLD_LPIPS_NET

# What rows scored this way record as their metric version (the AlexNet rows record lpips' own version string):
# a table or a resumed run never takes one for the other.
WORLD_LPIPS_VERSION = f"1.0+{WORLD_LPIPS_NET}-clip-trunk-resblocks-unit-weights"
NORMALIZE_EPS = 1e-10  # lpips.normalize_tensor's


class WorldTrunkLpips(torch.nn.Module):
    """``model(in0, in1)`` -> (N, 1, H, W) distance map when ``spatial``, else (N, 1, 1, 1), like ``lpips.LPIPS``."""

    def __init__(self, scorer: torch.nn.Module, spatial: bool) -> None:
        super().__init__()
        self.visual = scorer.visual
        self.spatial = spatial
        size = self.visual.image_size
        self.input_size = (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("mean", torch.tensor(self.visual.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.visual.image_std).view(1, 3, 1, 1), persistent=False)

    def block_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, C, H_l, W_l) patch tokens after each residual block, for images in [-1, 1]."""
        if tuple(images.shape[2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        clip_input = ((images + 1) / 2 - self.mean) / self.std
        outputs: list[torch.Tensor] = []
        handles = [
            block.register_forward_hook(lambda _block, _inputs, output: outputs.append(output))
            for block in self.visual.transformer.resblocks
        ]
        try:
            self.visual(clip_input)
        finally:
            for handle in handles:
                handle.remove()
        grid_h, grid_w = self.visual.grid_size
        features = []
        for output in outputs:
            tokens = output if self.visual.transformer.batch_first else output.transpose(0, 1)
            patches = tokens[:, -grid_h * grid_w :]  # the class token (and any other prefix token) dropped
            features.append(patches.reshape(len(patches), grid_h, grid_w, -1).permute(0, 3, 1, 2))
        return features

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        count = len(in0)
        total = torch.zeros((), dtype=in0.dtype, device=in0.device)
        for features in self.block_features(torch.cat([in0, in1])):
            unit = features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + NORMALIZE_EPS)
            squared = (unit[:count] - unit[count:]).pow(2).sum(dim=1, keepdim=True)
            if self.spatial:
                total = total + F.interpolate(squared, size=in0.shape[2:], mode="bilinear", align_corners=False)
            else:
                total = total + squared.mean(dim=(2, 3), keepdim=True)
        return total


def world_lpips_folder(pretrained: str | None) -> Path:
    """Where the trunk is read from: ``lpips.pretrained`` when given, else the shipped world scorer."""
    if pretrained:
        return Path(pretrained)
    from clic.tiny_world import TINY_WORLD_WEIGHTS

    return TINY_WORLD_WEIGHTS / "scorer"


def missing_world_scorer(options: Mapping[str, Any]) -> str | None:
    """One line when the world scorer is not in the folder the ``lpips`` options name (None when it is)."""
    from clic.world.scorer import SCORER_WEIGHTS

    folder = world_lpips_folder(options.get("pretrained"))
    if (folder / SCORER_WEIGHTS).is_file():
        return None
    return (
        f"LPIPS on the world CLIP's trunk (lpips.net: {WORLD_LPIPS_NET}) needs the world scorer, not in {folder}: "
        f"export it with `clic models train-world --stage scorer --out clic/world/weights`, or set lpips.pretrained "
        f"to a folder holding {SCORER_WEIGHTS}; --allow-random-metrics scores with a random trunk instead"
    )


def world_scorer_found(options: Mapping[str, Any]) -> list[str]:
    """Where the world scorer LPIPS reads is (``clic-bench doctor``); empty when missing."""
    if missing_world_scorer(options):
        return []
    return [f"LPIPS trunk {WORLD_LPIPS_NET} (the world scorer): {world_lpips_folder(options.get('pretrained'))}"]


def world_trunk_lpips(
    options: Mapping[str, Any], spatial: bool, random_seed: int | None = None
) -> tuple[WorldTrunkLpips, str]:
    """(distance, weights label): the world scorer's trunk labelled like the tiny-world model, or with
    ``random_seed`` the same architecture with seeded random weights, labelled tiny-random."""
    from clic.components import TINY_WORLD_LABEL
    from clic.world.scorer import build_scorer, load_scorer

    if random_seed is None:
        return WorldTrunkLpips(load_scorer(world_lpips_folder(options.get("pretrained"))), spatial), TINY_WORLD_LABEL
    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's RNG stream
        return WorldTrunkLpips(build_scorer(random_seed), spatial), TINY_RANDOM
