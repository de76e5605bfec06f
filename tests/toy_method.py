"""A toy method defined outside ``clic/`` (one file, registered by the tests with ``register_method``): it
"learns" the mean colour of the source region and transfers by filling the target mask with it. It shows
what a new method needs to provide and is checked end to end by ``tests/system/test_plugins.py``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clic.concept import LearnedConcept
from clic.learn import ConceptSource
from clic.methods.base import Method


@dataclass
class FillResult:
    image: torch.Tensor  # (3, R, R) in [0, 1]
    attention: torch.Tensor  # (R, R): the filled region


class MeanColourFill(Method):
    name = "toy_fill"
    description = "Fill the target mask with the source region's mean colour (a test's toy method)"
    trains = "nothing"
    tasks = frozenset({"learn", "transfer"})
    needs_model = False
    presets = {"default": {}}
    default_preset = "default"
    sources = {"method": "tests/toy_method.py (no paper: a test fixture)"}

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
        region = source.masks[0].cpu() > 0.5
        colour = ((source.image.cpu() + 1) / 2)[:, region].mean(dim=1)
        concept = LearnedConcept(
            method=self.name,
            preset=preset or self.default_preset,
            tokens=[],
            object_word=source.object_word,
            vectors={},
            config={"seed": seed},
            arrays={"colour": colour},
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
    ) -> FillResult:
        target = (target_image.cpu() + 1) / 2
        mask = target_mask.cpu() > 0.5
        filled = torch.where(mask[None], concept.arrays["colour"][:, None, None], target)
        return FillResult(filled, mask.float())
