"""CLIP similarities: concept fidelity in the RoI, preservation outside it, and prompt agreement.

Values are raw cosines in [-1, 1]. Papers often print CLIP scores x100 (or, for CLIP-score, 2.5 x
max(cos, 0)); such rescaling belongs in the report, never in the stored value.

Every image goes to CLIP the same way: padded to a square with neutral grey (so a wide crop is not
squashed), resized bicubically to the tower's input size, normalised with the model's own mean/std.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from importlib.metadata import version as package_version
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from . import models
from ._regions import concept_pair, outside_pair, pad_to_square, sample_image, to_tensor
from .base import MetricSettings, MetricValue, Sample
from .options import CLIP_OPTIONS

_SCALE = "cosine [-1, 1] (raw, not x100 or x2.5)"
_VERSION = f"1.0+open_clip-{package_version('open_clip_torch')}"


def _clip_inputs(clip: models.ClipModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """(N, 3, h, w) normalised CLIP inputs; each image is resized on its own since sizes differ."""
    resized = [
        F.interpolate(
            to_tensor([pad_to_square(image)]), size=clip.image_size, mode="bicubic", antialias=True, align_corners=False
        ).clamp(0, 1)
        for image in images
    ]
    return (torch.cat(resized) - clip.mean) / clip.std


@torch.inference_mode()
def embed_images(clip: models.ClipModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Unit-norm image embeddings (N, D), computed in batches of ``clip.batch_size``."""
    chunks = [
        clip.model.encode_image(
            _clip_inputs(clip, images[start : start + clip.batch_size]).to(clip.device), normalize=True
        )
        .float()
        .cpu()
        for start in range(0, len(images), clip.batch_size)
    ]
    return torch.cat(chunks)


@torch.inference_mode()
def embed_texts(clip: models.ClipModel, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text embeddings (N, D), computed in batches of ``clip.batch_size``."""
    chunks = [
        clip.model.encode_text(
            clip.tokenizer(list(texts[start : start + clip.batch_size])).to(clip.device), normalize=True
        )
        .float()
        .cpu()
        for start in range(0, len(texts), clip.batch_size)
    ]
    return torch.cat(chunks)


class PairedCosineMetric(ABC):
    """Cosines between the two images of region pairs, embedded in one batched pass per call.

    Subclasses give ``value_pairs`` (value name -> function from a sample to its image pair, or None) and
    ``embed`` (images -> unit-norm embeddings). A value is omitted when its pair is None.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    scale: ClassVar[str] = _SCALE
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})
    value_pairs: ClassVar[dict[str, Callable[[Sample], tuple[np.ndarray, np.ndarray] | None]]]

    @abstractmethod
    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Unit-norm embeddings (N, D) of ``images``."""

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        pairs: list[tuple[int, str, np.ndarray, np.ndarray]] = []
        for index, sample in enumerate(samples):
            if sample.task not in self.tasks:
                continue
            for value_name, make_pair in self.value_pairs.items():
                pair = make_pair(sample)
                if pair is not None:
                    pairs.append((index, value_name, *pair))
        results: list[list[MetricValue]] = [[] for _ in samples]
        if not pairs:
            return results
        # One batched pass over all first images then all second images of every pair.
        embeddings = self.embed([pair[2] for pair in pairs] + [pair[3] for pair in pairs])
        cosines = (embeddings[: len(pairs)] * embeddings[len(pairs) :]).sum(dim=1).clamp(-1, 1)
        for (index, value_name, _, _), cosine in zip(pairs, cosines.tolist()):
            results[index].append(MetricValue(value_name, cosine))
        return results


class ClipImageSimilarity(PairedCosineMetric):
    """CLIP image-image cosine: "clip_i_roi" (source RoI vs edited RoI, the concept transferred?) and
    "clip_i_outside" (target vs output with the mask greyed out in both, the rest preserved?).

    A value is omitted when its inputs are missing or its region is empty (an empty mask has no RoI;
    a full mask has no outside).
    """

    name: ClassVar[str] = "clip_image"
    options: ClassVar[dict] = {"clip": CLIP_OPTIONS}  # harness.metrics.options
    values: ClassVar[dict[str, bool]] = {"clip_i_roi": True, "clip_i_outside": True}
    version: ClassVar[str] = _VERSION
    value_pairs: ClassVar[dict] = {"clip_i_roi": concept_pair, "clip_i_outside": outside_pair}

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_clip_weights)
    weights_found = staticmethod(models.clip_weights_found)

    def __init__(self, settings: MetricSettings) -> None:
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return embed_images(self.clip, images)


class ClipTextSimilarity:
    """CLIP text-image cosine between the sample's prompt and its output image: "clip_t"."""

    name: ClassVar[str] = "clip_text"
    options: ClassVar[dict] = {"clip": CLIP_OPTIONS}  # harness.metrics.options
    values: ClassVar[dict[str, bool]] = {"clip_t": True}
    version: ClassVar[str] = _VERSION
    scale: ClassVar[str] = _SCALE
    tasks: ClassVar[frozenset[str]] = frozenset({"generate"})

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_clip_weights)
    weights_found = staticmethod(models.clip_weights_found)

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
