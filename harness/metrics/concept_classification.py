"""ConceptExpress's concept similarity (SIM^I, SIM^C) and classification accuracy (ACC¹, ACC³).

A group metric over the generations of *several* concepts (e.g. every generation of one method × preset
on one category). A concept is identified by its source region: samples whose source image and source
mask are equal belong to one concept. With CLIP image embeddings (unit norm):

- prototype of a concept = the embedding of its source region (masked crop: outside grey, cropped to
  the mask's bounding box), the "extracted concept" ConceptExpress classifies with;
- "sim_i" = mean over generations of cos(generation, own concept's source region);
- "sim_c" = mean over generations of cos(generation, own concept's whole source image) — ConceptExpress
  compares a composition of all concepts with the whole source; one concept per generation here;
- "acc1" / "acc3" = share of generations whose own concept is among the top-1 / top-3 prototypes by
  cosine. ACC¹ needs at least 2 concepts, ACC³ at least 4 (with 3 or fewer it is 1 by construction).
- "acc1_chance" / "acc3_chance" = the accuracy of a uniform guess among the C concepts (1/C, 3/C), reported
  beside each accuracy: with 4 concepts ACC³ = 0.75 is chance, not skill.

The runner scores it on each "concepts" group: the generations of one method x preset x generation settings
(the object word aside), over every source (concept) of the run — all categories — every seed and object.
The class set is every concept of the run, as ConceptExpress classifies among all its extracted concepts.
A group of one concept gives SIM values only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from ..groups import CONCEPTS
from . import models
from ._regions import sample_image, sample_mask
from .base import MetricSettings, MetricValue, Sample
from .clip_sim import embed_images
from .masked_similarity import masked_crop
from .options import CLIP_OPTIONS


def concept_key(source: np.ndarray, mask: np.ndarray) -> str:
    """Content id of a concept: its source pixels and mask."""
    digest = hashlib.sha1(np.ascontiguousarray(source).tobytes())
    digest.update(np.packbits(mask).tobytes())
    digest.update(str(source.shape).encode())
    return digest.hexdigest()


def top_k_accuracy(similarities: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows of ``similarities`` (N, C) whose label is among the k highest columns."""
    top = similarities.topk(min(k, similarities.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


class ConceptClassification:
    """SIM^I, SIM^C, ACC¹, ACC³ over the generations of several concepts (a group metric)."""

    name: ClassVar[str] = "concept_classification"
    options: ClassVar[dict] = {"clip": CLIP_OPTIONS}  # harness.metrics.options
    # The chance levels are reference values beside the accuracies (a uniform guess's), not scores to rank.
    values: ClassVar[dict[str, bool]] = {
        "sim_i": True,
        "sim_c": True,
        "acc1": True,
        "acc3": True,
        "acc1_chance": True,
        "acc3_chance": True,
    }
    version: ClassVar[str] = "2.0"
    scale: ClassVar[str] = (
        "sim_i, sim_c: mean cosine [-1, 1]; acc1, acc3: accuracy [0, 1] (higher is better) among "
        "every concept of the run; acc1_chance, acc3_chance: a uniform guess's accuracy"
    )
    tasks: ClassVar[frozenset[str]] = frozenset({"generate"})
    group_by: ClassVar[str] = CONCEPTS  # one method x settings, over every source of the run, seeds and objects

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_clip_weights)
    weights_found = staticmethod(models.clip_weights_found)

    def __init__(self, settings: MetricSettings) -> None:
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def compute_group(self, samples: Sequence[Sample]) -> list[MetricValue]:
        outputs, labels = [], []
        concepts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> (source region crop, whole source)
        for sample in samples:
            output = sample_image(sample, "output_image") if sample.task in self.tasks else None
            source, mask = sample_image(sample, "source_image"), sample_mask(sample, "source_mask")
            if output is None or source is None or mask is None:
                continue
            region = masked_crop(source, mask)
            if region is None:
                continue
            key = concept_key(source, mask)
            concepts.setdefault(key, (region, source))
            outputs.append(output)
            labels.append(list(concepts).index(key))
        if not outputs:
            return []
        keys = list(concepts)
        embeddings = embed_images(self.clip, outputs + [concepts[k][0] for k in keys] + [concepts[k][1] for k in keys])
        generated = embeddings[: len(outputs)]
        prototypes = embeddings[len(outputs) : len(outputs) + len(keys)]
        wholes = embeddings[len(outputs) + len(keys) :]
        label_tensor = torch.tensor(labels)
        similarities = generated @ prototypes.T  # (N, C)
        values = [
            MetricValue("sim_i", float(similarities[torch.arange(len(labels)), label_tensor].mean())),
            MetricValue("sim_c", float((generated * wholes[label_tensor]).sum(dim=1).mean())),
        ]
        if len(keys) >= 2:
            values.append(MetricValue("acc1", top_k_accuracy(similarities, label_tensor, 1)))
            values.append(MetricValue("acc1_chance", 1 / len(keys)))
        if len(keys) >= 4:
            values.append(MetricValue("acc3", top_k_accuracy(similarities, label_tensor, 3)))
            values.append(MetricValue("acc3_chance", 3 / len(keys)))
        return values
