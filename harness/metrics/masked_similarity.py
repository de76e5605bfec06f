"""Masked image similarity (SingleInsert's CLIP-I-f / CLIP-I-b, and the same with DINO features).

SingleInsert (§4.1) scores *generations*: foreground similarity = the source's foreground vs the generated
foreground (higher: the concept is kept), background similarity = the source's *background* vs the generated
background (lower: the concept did not drag its background along — foreground/background disentanglement).
For a generation sample:
- foreground ("*_f"): the source's concept region (outside the source mask grey, cropped to its box) vs the
  generated object (outside it grey, cropped to its box). Higher is better.
- background ("*_b"): the source with its concept region greyed vs the generation with its object greyed.
  **Lower is better.** The generated object's mask comes from :func:`._regions.generated_object_mask`
  (border-colour rule; no segmentation model offline).
For a transfer sample: "*_f" is the source's concept region vs the edited region (output cut with the target
mask); the preservation of the target outside the edit is ``clip_i_outside`` (metric ``clip_image``) and
``dino_outside`` here — a different quantity from "*_b", and higher is better there.

Values are raw cosines of the tower's image embeddings in [-1, 1] (identical inputs give 1). A value is
omitted when its inputs are missing or its region is empty.

DINO: ``timm``'s ``vit_small_patch16_224.dino`` (CLS token), read only from the local Hugging Face cache
or from the file named by the suite option ``dino.pretrained``; missing weights fail in one line unless
random metrics are allowed (then a tiny seeded ViT scores, labelled ``tiny-random``), as CLIP in
:mod:`harness.metrics.models`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache  # a cache lookup only: never touches the network

from . import models
from ._regions import (
    NEUTRAL_GREY,
    concept_pair,
    crop_to_mask,
    fill_region,
    generation_view,
    outside_pair,
    pad_to_square,
    resize_mask,
    to_tensor,
)
from .base import TINY_RANDOM, MetricSettings, Sample
from .clip_sim import PairedCosineMetric, embed_images
from .options import CLIP_OPTIONS, DINO_MODEL, DINO_OPTIONS

_log = logging.getLogger(__name__)
_SCALE = "cosine [-1, 1] (raw, not x100)"

DINO_OPTIONS_KEY = "dino"
TINY_DINO = {"img_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


# ------------------------------------------------------------------------------------ regions
def masked_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``image`` with the outside of ``mask`` grey, cropped to the mask's bounding box (None if empty)."""
    mask = resize_mask(mask, image.shape[:2])
    return crop_to_mask(fill_region(image, ~mask, NEUTRAL_GREY), mask)


def foreground_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """(source concept region, generated object | edited region), both masked crops; None if missing or empty."""
    if sample.task == "generate":
        view = generation_view(sample)
        if view is None:
            return None
        source, source_mask, output, object_mask = view
        source_region, generated_region = masked_crop(source, source_mask), masked_crop(output, object_mask)
        return None if source_region is None or generated_region is None else (source_region, generated_region)
    return concept_pair(sample, masked_crop) if sample.task == "transfer" else None


def background_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """(source with its concept region grey, generation with its object grey): generations only."""
    view = generation_view(sample)
    if view is None:
        return None
    source, source_mask, output, object_mask = view
    if source_mask.all() or object_mask.all():
        return None
    return fill_region(source, source_mask), fill_region(output, object_mask)


def preservation_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """Target vs output outside the edit: transfers only (a preservation score, higher is better)."""
    return outside_pair(sample) if sample.task == "transfer" else None


# ------------------------------------------------------------------------------------ DINO
@dataclass(frozen=True)
class DinoModel:
    model: torch.nn.Module
    image_size: tuple[int, int]
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor
    weights: str
    device: torch.device
    batch_size: int


_DINO_MISSING = (
    f"DINO weights {DINO_MODEL} are not in the local cache (offline, nothing is downloaded): on a machine with "
    f"internet run python -c \"import timm; timm.create_model('{DINO_MODEL}', pretrained=True)\" and copy "
    f"~/.cache/huggingface here, or set the suite's metric option dino.pretrained to a local file; "
    f"--allow-random-metrics scores with a tiny random ViT instead"
)


def _dino_checkpoint(options: dict[str, Any]) -> str | None:
    """The local DINO checkpoint (a file from the suite or the HF cache), or None."""
    checkpoint = options.get("pretrained") or try_to_load_from_cache(
        f"timm/{DINO_MODEL}", "model.safetensors", cache_dir=options.get("cache_dir")
    )
    return checkpoint if isinstance(checkpoint, str) and os.path.isfile(checkpoint) else None


def missing_dino_weights(settings: MetricSettings) -> list[str]:
    """One line when :func:`load_dino` would not find its weights and random weights are not allowed."""
    if settings.allow_random or _dino_checkpoint(settings.for_metric(DINO_OPTIONS_KEY)) is not None:
        return []
    return [_DINO_MISSING]


def dino_weights_found(settings: MetricSettings) -> list[str]:
    """Where the DINO weights are (``clic-bench doctor``); empty when missing."""
    checkpoint = _dino_checkpoint(settings.for_metric(DINO_OPTIONS_KEY))
    return [f"DINO {DINO_MODEL}: {checkpoint}"] if checkpoint else []


def load_dino(settings: MetricSettings) -> DinoModel:
    """DINO ViT-S/16 from a local file or the HF cache, else (if allowed) a tiny random ViT."""
    options = settings.for_metric(DINO_OPTIONS_KEY)
    device = torch.device(settings.device)
    checkpoint = _dino_checkpoint(options)
    if checkpoint is not None:
        model = timm.create_model(
            DINO_MODEL, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": checkpoint}
        )
        weights = DINO_MODEL
    else:
        missing = _DINO_MISSING
        if not settings.allow_random:
            raise models.WeightsUnavailable(missing)
        _log.warning("%s -> scoring with a tiny random ViT, labelled %r", missing, TINY_RANDOM)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(models.TINY_SEED)
            model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **TINY_DINO)
        weights = TINY_RANDOM
    models.LOAD_COUNT["dino"] += 1
    config = model.pretrained_cfg
    side = config["input_size"][-1] if weights != TINY_RANDOM else TINY_DINO["img_size"]
    return DinoModel(
        model=model.to(device).eval().requires_grad_(False),
        image_size=(side, side),
        mean=torch.tensor(config.get("mean", timm.data.IMAGENET_DEFAULT_MEAN), dtype=torch.float32).view(1, 3, 1, 1),
        std=torch.tensor(config.get("std", timm.data.IMAGENET_DEFAULT_STD), dtype=torch.float32).view(1, 3, 1, 1),
        weights=weights,
        device=device,
        batch_size=int(options.get("batch_size", models.DEFAULT_BATCH_SIZE)),
    )


@torch.inference_mode()
def embed_dino(dino: DinoModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Unit-norm CLS embeddings (N, D): grey-padded to a square, bicubic-resized, normalised."""
    chunks = []
    for start in range(0, len(images), dino.batch_size):
        batch = torch.cat(
            [
                F.interpolate(
                    to_tensor([pad_to_square(image)]),
                    size=dino.image_size,
                    mode="bicubic",
                    antialias=True,
                    align_corners=False,
                ).clamp(0, 1)
                for image in images[start : start + dino.batch_size]
            ]
        )
        features = dino.model(((batch - dino.mean) / dino.std).to(dino.device)).float().cpu()
        chunks.append(F.normalize(features, dim=-1))
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------ the metrics
_MASKED_SCALE = (
    f"{_SCALE}; *_f higher is better, *_b (generations: source background vs generated background) "
    f"lower is better, *_outside (transfers) higher is better"
)
_TASKS = frozenset({"transfer", "generate"})


class ClipMaskedSimilarity(PairedCosineMetric):
    """SingleInsert's CLIP-I-f ("clip_i_f") and CLIP-I-b ("clip_i_b", generations, lower is better)."""

    name: ClassVar[str] = "clip_masked"
    options: ClassVar[dict] = {"clip": CLIP_OPTIONS}  # harness.metrics.options
    values: ClassVar[dict[str, bool]] = {"clip_i_f": True, "clip_i_b": False}
    version: ClassVar[str] = "2.0"
    scale: ClassVar[str] = _MASKED_SCALE
    tasks: ClassVar[frozenset[str]] = _TASKS
    value_pairs: ClassVar[dict] = {"clip_i_f": foreground_pair, "clip_i_b": background_pair}

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_clip_weights)
    weights_found = staticmethod(models.clip_weights_found)

    def __init__(self, settings: MetricSettings) -> None:
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return embed_images(self.clip, images)


class DinoMaskedSimilarity(PairedCosineMetric):
    """The same split with DINO ViT-S/16 CLS features: "dino_f", "dino_b" (generations, lower is better) and,
    on transfers, the preservation "dino_outside"."""

    name: ClassVar[str] = "dino_masked"
    options: ClassVar[dict] = {"dino": DINO_OPTIONS}  # harness.metrics.options
    values: ClassVar[dict[str, bool]] = {"dino_f": True, "dino_b": False, "dino_outside": True}
    version: ClassVar[str] = f"2.0+timm-{timm.__version__}"
    scale: ClassVar[str] = _MASKED_SCALE
    tasks: ClassVar[frozenset[str]] = _TASKS
    value_pairs: ClassVar[dict] = {
        "dino_f": foreground_pair,
        "dino_b": background_pair,
        "dino_outside": preservation_pair,
    }

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(missing_dino_weights)
    weights_found = staticmethod(dino_weights_found)

    def __init__(self, settings: MetricSettings) -> None:
        self.dino = load_dino(settings)
        self.weights = self.dino.weights

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return embed_dino(self.dino, images)
