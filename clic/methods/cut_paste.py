"""Cut-and-paste: the straw man of the paper's introduction, and the harness's cheapest method.

"Learning" keeps the source pixels and mask; transfer scales the source RoI's bounding-box crop to the
target mask's bounding box and pastes it inside the target mask (outside it the target is untouched).
No model is loaded, so it anchors tables at no cost and makes harness load tests cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..concept import LearnedConcept
from ..learn import ConceptSource
from .base import Method


@dataclass
class PasteResult:
    image: torch.Tensor  # (3, R, R) in [0, 1]
    attention: torch.Tensor  # (R, R): the pasted region (there is no attention)


def bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a non-empty (H, W) mask, bottom/right exclusive."""
    rows = mask.any(dim=1).nonzero()
    cols = mask.any(dim=0).nonzero()
    if len(rows) == 0:
        raise ValueError("the mask is empty")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def paste(
    source: torch.Tensor, source_mask: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
    """Images (3,H,W) in [0,1], masks (H,W) bool: the source RoI resized into the target mask's box."""
    top, left, bottom, right = bounding_box(source_mask)
    t_top, t_left, t_bottom, t_right = bounding_box(target_mask)
    crop = source[:, top:bottom, left:right]
    size = (t_bottom - t_top, t_right - t_left)
    patch = F.interpolate(crop[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    result = target.clone()
    region = target_mask[t_top:t_bottom, t_left:t_right]
    window = result[:, t_top:t_bottom, t_left:t_right]
    result[:, t_top:t_bottom, t_left:t_right] = torch.where(region[None], patch.clamp(0, 1), window)
    return result


class CutPaste(Method):
    name = "cut_paste"
    description = "Paste the source RoI, scaled to the target mask's bounding box, into the target"
    trains = "nothing"
    tasks = frozenset({"learn", "transfer"})
    needs_model = False
    presets = {"default": {}}
    default_preset = "default"
    sources = {"method": "CLiC paper §1 (the naive baseline it argues against)"}
    task_settings_types = {"transfer": None}  # pastes: no schedule, no guidance

    def learn(
        self,
        components: Any,
        source: ConceptSource,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> LearnedConcept:
        concept = LearnedConcept(
            method=self.name,
            preset=preset or self.default_preset,
            tokens=[],
            object_word=source.object_word,
            vectors={},
            config={"seed": seed},
            arrays={"source_image": source.image.detach().cpu(), "source_mask": source.masks[0].detach().cpu()},
        )
        if out_dir is not None:
            concept.save(out_dir)
        return concept

    def transfer(
        self,
        components: Any,
        concept: LearnedConcept,
        target_image: torch.Tensor,
        target_mask: torch.Tensor,
        object_word: str,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> PasteResult:
        source = (concept.arrays["source_image"] + 1) / 2
        target = (target_image.cpu() + 1) / 2
        mask = target_mask.cpu() > 0.5
        return PasteResult(paste(source, concept.arrays["source_mask"] > 0.5, target, mask), mask.float())
