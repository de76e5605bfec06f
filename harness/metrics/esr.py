"""Editing success rate (SingleInsert's ESR): the share of generations that satisfy their edit prompt.

Each generation sample is judged 0 (edit not satisfied) or 1 (satisfied), stored as the value "esr";
the ESR of a method is the mean of these values over its generations (the report's table mean, with a
bootstrap CI). A prompt names one or two edit targets (SingleInsert's editing prompts do), and the sample
succeeds when *every* target holds. SingleInsert judged with people; here the judge is fixed and documented:

- the object target — every prompt puts the concept on ``sample.object_word`` (CLiC's generation):
  CLIP zero-shot over "a photo of a {word}" for the candidate objects (suite option ``esr.candidates``,
  default :data:`DEFAULT_CANDIDATES`, plus the requested word): success when the requested object is the
  top-1 class (the threshold is the best competing candidate). With ``--allow-random-metrics`` the CLIP is
  tiny and random and the value is labelled ``tiny-random``.
- the colour target — the prompt names a colour of :data:`COLOURS` ("a red chair with <v*> style"):
  analytic, and counted **inside the generated object only** (its mask from
  :func:`._regions.generated_object_mask`): each object pixel goes to its nearest palette colour in
  CIELAB, and the edit succeeds when at least :data:`COLOUR_SHARE` of the object's pixels are the requested
  colour — a red background around an unchanged object does not pass.

:data:`EDIT_PROMPTS` is the fixed list a suite generates with (``generate.prompts: esr``): one prompt with the
object target alone and four with object + colour. SingleInsert's own list (its supplement) could not be
obtained here; this list follows its form (one or two edit targets per prompt), not its words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from skimage.color import rgb2lab

from . import models
from ._regions import generated_object_mask, sample_image
from .base import MetricSettings, MetricValue, Sample
from .clip_sim import embed_images, embed_texts
from .options import CLIP_OPTIONS, EDIT_PROMPTS, ESR_OPTIONS  # noqa: F401 - EDIT_PROMPTS re-exported

ESR_OPTIONS_KEY = "esr"
COLOUR_SHARE = 0.25  # share of the generated object's pixels of the requested colour for a colour edit to count
COLOURS: dict[str, tuple[float, float, float]] = {  # sRGB in [0, 1]
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.65, 0.15),
    "blue": (0.10, 0.20, 0.85),
    "yellow": (0.95, 0.90, 0.10),
    "orange": (0.95, 0.55, 0.05),
    "purple": (0.50, 0.15, 0.65),
    "pink": (0.95, 0.55, 0.75),
    "brown": (0.45, 0.28, 0.12),
    "white": (0.97, 0.97, 0.97),
    "black": (0.03, 0.03, 0.03),
    "gray": (0.5, 0.5, 0.5),
}
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "chair",
    "sofa",
    "table",
    "lamp",
    "vase",
    "bed",
    "ring",
    "necklace",
    "bracelet",
    "earring",
    "building",
    "house",
    "tower",
    "cup",
    "bowl",
    "plate",
    "teapot",
    "car",
    "dog",
    "cat",
)
_PALETTE_LAB = rgb2lab(np.array([list(COLOURS.values())], dtype=np.float64))[0]  # (k, 3)


def requested_colour(prompt: str | None) -> str | None:
    """The first palette colour named as a whole word in ``prompt`` (None for an object edit)."""
    words = re.findall(r"[a-z]+", (prompt or "").lower())
    return next((word for word in words if word in COLOURS), None)


def colour_share(image: np.ndarray, colour: str, region: np.ndarray | None = None) -> float:
    """Share of the pixels (of ``region``, default all) whose nearest palette colour (CIELAB) is ``colour``."""
    lab = rgb2lab(image.astype(np.float64))
    lab = (lab[region] if region is not None else lab.reshape(-1, 3))[:, None]
    if lab.shape[0] == 0:
        return 0.0
    nearest = np.argmin(((lab - _PALETTE_LAB[None]) ** 2).sum(-1), axis=1)
    return float((nearest == list(COLOURS).index(colour)).mean())


def colour_edit_success(image: np.ndarray, colour: str) -> bool:
    """The colour target: at least :data:`COLOUR_SHARE` of the generated object's pixels are ``colour``."""
    region = generated_object_mask(image)
    return region is not None and colour_share(image, colour, region) >= COLOUR_SHARE


def zero_shot_success(image_embedding: np.ndarray, text_embeddings: np.ndarray, target: int) -> bool:
    """True when the target class has the highest cosine (ties go against the edit)."""
    scores = text_embeddings @ image_embedding
    others = np.delete(scores, target)
    return bool(others.size == 0 or scores[target] > others.max())


class EditingSuccessRate:
    """Per generation: 1 if its edit (colour or object, see the module docstring) is satisfied, else 0."""

    name: ClassVar[str] = "esr"
    options: ClassVar[dict] = {"esr": ESR_OPTIONS, "clip": CLIP_OPTIONS}  # harness.metrics.options
    values: ClassVar[dict[str, bool]] = {"esr": True}
    version: ClassVar[str] = "2.0"
    scale: ClassVar[str] = (
        "{0, 1} per generated image (every edit target of its prompt met; colour counted "
        "inside the generated object), a job's value the mean of its images; "
        "the mean is the editing success rate (higher is better)"
    )
    tasks: ClassVar[frozenset[str]] = frozenset({"generate"})

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_clip_weights)
    weights_found = staticmethod(models.clip_weights_found)

    def __init__(self, settings: MetricSettings) -> None:
        options = settings.for_metric(ESR_OPTIONS_KEY)
        self.candidates = tuple(options.get("candidates", DEFAULT_CANDIDATES))
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        results: list[list[MetricValue]] = [[] for _ in samples]
        judged: list[tuple[int, np.ndarray, str, bool]] = []  # (index, image, object word, colour target met)
        for index, sample in enumerate(samples):
            output = sample_image(sample, "output_image") if sample.task in self.tasks else None
            if output is None or not sample.object_word:
                continue
            colour = requested_colour(sample.prompt)
            judged.append((index, output, sample.object_word, colour is None or colour_edit_success(output, colour)))
        if judged:
            words = list(dict.fromkeys([*self.candidates, *(word for _, _, word, _ in judged)]))
            text = embed_texts(self.clip, [f"a photo of a {word}" for word in words]).numpy()
            images = embed_images(self.clip, [output for _, output, _, _ in judged]).numpy()
            for (index, _, word, colour_met), image in zip(judged, images):
                success = colour_met and zero_shot_success(image, text, words.index(word))
                results[index].append(MetricValue("esr", float(success)))
        return results
