"""CLIP similarities: concept fidelity in the RoI, preservation outside it, and prompt agreement.

Values are raw cosines in [-1, 1]. Papers often print CLIP scores x100 (or, for CLIP-score, 2.5 x
max(cos, 0)); such rescaling belongs in the report, never in the stored value.

Every image goes to CLIP the same way: padded to a square with neutral grey (so a wide crop is not
squashed), resized bicubically to the tower's input size, normalised with the model's own mean/std.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from . import models
from ._regions import crop_to_mask, fill_region, pad_to_square, sample_image, sample_mask, to_tensor, transfer_view
from .base import MetricSettings, MetricValue, Sample

_SCALE = "cosine [-1, 1] (raw, not x100 or x2.5)"
_VERSION = f"1.0+open_clip-{open_clip.__version__}"


def _clip_inputs(clip: models.ClipModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """(N, 3, h, w) normalised CLIP inputs; each image is resized on its own since sizes differ."""
    resized = [
        F.interpolate(to_tensor([pad_to_square(image)]), size=clip.image_size, mode="bicubic",
                      antialias=True, align_corners=False).clamp(0, 1)
        for image in images
    ]
    return (torch.cat(resized) - clip.mean) / clip.std


@torch.inference_mode()
def embed_images(clip: models.ClipModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Unit-norm image embeddings (N, D), computed in batches of ``clip.batch_size``."""
    chunks = [
        clip.model.encode_image(_clip_inputs(clip, images[start: start + clip.batch_size]).to(clip.device),
                                normalize=True).float().cpu()
        for start in range(0, len(images), clip.batch_size)
    ]
    return torch.cat(chunks)


@torch.inference_mode()
def embed_texts(clip: models.ClipModel, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text embeddings (N, D), computed in batches of ``clip.batch_size``."""
    chunks = [
        clip.model.encode_text(clip.tokenizer(list(texts[start: start + clip.batch_size])).to(clip.device),
                               normalize=True).float().cpu()
        for start in range(0, len(texts), clip.batch_size)
    ]
    return torch.cat(chunks)


def _roi_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """Source RoI crop and edited RoI crop, or None when a needed input is missing or a mask is empty."""
    source, source_mask = sample_image(sample, "source_image"), sample_mask(sample, "source_mask")
    output, target_mask = sample_image(sample, "output_image"), sample_mask(sample, "target_mask")
    if source is None or source_mask is None or output is None or target_mask is None:
        return None
    source_roi, output_roi = crop_to_mask(source, source_mask), crop_to_mask(output, target_mask)
    if source_roi is None or output_roi is None:
        return None
    return source_roi, output_roi


def _outside_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """Target and output with the edited region greyed out in both; None if missing or nothing is outside."""
    view = transfer_view(sample)
    if view is None or not view.outside.any():
        return None
    return fill_region(view.target, view.mask), fill_region(view.output, view.mask)


class ClipImageSimilarity:
    """CLIP image-image cosine: "clip_i_roi" (source RoI vs edited RoI, the concept transferred?) and
    "clip_i_outside" (target vs output with the mask greyed out in both, the rest preserved?).

    A value is omitted when its inputs are missing or its region is empty (an empty mask has no RoI;
    a full mask has no outside).
    """

    name: ClassVar[str] = "clip_image"
    version: ClassVar[str] = _VERSION
    scale: ClassVar[str] = _SCALE
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})

    def __init__(self, settings: MetricSettings) -> None:
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        pairs: list[tuple[int, str, np.ndarray, np.ndarray]] = []
        for index, sample in enumerate(samples):
            if sample.task not in self.tasks:
                continue
            for value_name, pair in (("clip_i_roi", _roi_pair(sample)), ("clip_i_outside", _outside_pair(sample))):
                if pair is not None:
                    pairs.append((index, value_name, *pair))

        results: list[list[MetricValue]] = [[] for _ in samples]
        if not pairs:
            return results
        # One batched pass over all first images then all second images of every pair.
        embeddings = embed_images(self.clip, [pair[2] for pair in pairs] + [pair[3] for pair in pairs])
        cosines = (embeddings[: len(pairs)] * embeddings[len(pairs):]).sum(dim=1).clamp(-1, 1)
        for (index, value_name, _, _), cosine in zip(pairs, cosines.tolist()):
            results[index].append(MetricValue(value_name, cosine))
        return results


class ClipTextSimilarity:
    """CLIP text-image cosine between the sample's prompt and its output image: "clip_t"."""

    name: ClassVar[str] = "clip_text"
    version: ClassVar[str] = _VERSION
    scale: ClassVar[str] = _SCALE
    tasks: ClassVar[frozenset[str]] = frozenset({"generate"})

    def __init__(self, settings: MetricSettings) -> None:
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        scored: list[tuple[int, str, np.ndarray]] = []
        for index, sample in enumerate(samples):
            if sample.task not in self.tasks or not sample.prompt:
                continue
            output = sample_image(sample, "output_image")
            if output is not None:
                scored.append((index, sample.prompt, output))

        results: list[list[MetricValue]] = [[] for _ in samples]
        if not scored:
            return results
        image_embeddings = embed_images(self.clip, [output for _, _, output in scored])
        text_embeddings = embed_texts(self.clip, [prompt for _, prompt, _ in scored])
        cosines = (image_embeddings * text_embeddings).sum(dim=1).clamp(-1, 1)
        for (index, _, _), cosine in zip(scored, cosines.tolist()):
            results[index].append(MetricValue("clip_t", cosine))
        return results
