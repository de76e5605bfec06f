"""Masked image similarity (SingleInsert's CLIP-I-f / CLIP-I-b, and the same with DINO features).

For a transfer sample:
- foreground ("*_f"): the source's concept region vs the edited region — each image with the pixels
  outside its own mask set to neutral grey and cropped to the mask's bounding box (source image with the
  source mask, output with the target mask). Did the concept arrive?
- background ("*_b"): the target vs the output with the target mask greyed out in both. Did the rest stay?

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
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache  # a cache lookup only: never touches the network

from . import models
from ._regions import NEUTRAL_GREY, concept_pair, crop_to_mask, fill_region, outside_pair, pad_to_square, resize_mask, \
    to_tensor
from .base import TINY_RANDOM, MetricSettings, Sample
from .clip_sim import PairedCosineMetric, embed_images

_log = logging.getLogger(__name__)
_SCALE = "cosine [-1, 1] (raw, not x100)"

DINO_OPTIONS_KEY = "dino"
DINO_MODEL = "vit_small_patch16_224.dino"
TINY_DINO = dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2)


# ------------------------------------------------------------------------------------ regions
def masked_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``image`` with the outside of ``mask`` grey, cropped to the mask's bounding box (None if empty)."""
    mask = resize_mask(mask, image.shape[:2])
    return crop_to_mask(fill_region(image, ~mask, NEUTRAL_GREY), mask)


def foreground_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """(source concept region, output's edited region), both masked crops; None if missing or empty."""
    return concept_pair(sample, masked_crop)


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
    f"--allow-random-metrics scores with a tiny random ViT instead")


def _dino_checkpoint(options: dict[str, Any]) -> str | None:
    """The local DINO checkpoint (a file from the suite or the HF cache), or None."""
    checkpoint = options.get("pretrained") or try_to_load_from_cache(f"timm/{DINO_MODEL}", "model.safetensors",
                                                                     cache_dir=options.get("cache_dir"))
    return checkpoint if isinstance(checkpoint, str) and os.path.isfile(checkpoint) else None


def missing_dino_weights(settings: MetricSettings) -> list[str]:
    """One line when :func:`load_dino` would not find its weights and random weights are not allowed."""
    if settings.allow_random or _dino_checkpoint(settings.for_metric(DINO_OPTIONS_KEY)) is not None:
        return []
    return [_DINO_MISSING]


def load_dino(settings: MetricSettings) -> DinoModel:
    """DINO ViT-S/16 from a local file or the HF cache, else (if allowed) a tiny random ViT."""
    options = settings.for_metric(DINO_OPTIONS_KEY)
    device = torch.device(settings.device)
    checkpoint = _dino_checkpoint(options)
    if checkpoint is not None:
        model = timm.create_model(DINO_MODEL, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": checkpoint})
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
        batch = torch.cat([
            F.interpolate(to_tensor([pad_to_square(image)]), size=dino.image_size, mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 1)
            for image in images[start: start + dino.batch_size]
        ])
        features = dino.model(((batch - dino.mean) / dino.std).to(dino.device)).float().cpu()
        chunks.append(F.normalize(features, dim=-1))
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------ the metrics
class ClipMaskedSimilarity(PairedCosineMetric):
    """SingleInsert's CLIP-I-f ("clip_i_f") and CLIP-I-b ("clip_i_b") on masked crops."""

    name: ClassVar[str] = "clip_masked"
    values: ClassVar[dict[str, bool]] = {"clip_i_f": True, "clip_i_b": True}
    version: ClassVar[str] = "1.0"
    scale: ClassVar[str] = _SCALE
    value_pairs: ClassVar[dict] = {"clip_i_f": foreground_pair, "clip_i_b": outside_pair}

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_clip_weights)

    def __init__(self, settings: MetricSettings) -> None:
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return embed_images(self.clip, images)


class DinoMaskedSimilarity(PairedCosineMetric):
    """The same split with DINO ViT-S/16 CLS features: "dino_f" and "dino_b"."""

    name: ClassVar[str] = "dino_masked"
    values: ClassVar[dict[str, bool]] = {"dino_f": True, "dino_b": True}
    version: ClassVar[str] = f"1.0+timm-{timm.__version__}"
    scale: ClassVar[str] = _SCALE
    value_pairs: ClassVar[dict] = {"dino_f": foreground_pair, "dino_b": outside_pair}

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(missing_dino_weights)

    def __init__(self, settings: MetricSettings) -> None:
        self.dino = load_dino(settings)
        self.weights = self.dino.weights

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return embed_dino(self.dino, images)
