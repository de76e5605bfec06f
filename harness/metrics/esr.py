"""Editing success rate (SingleInsert's ESR): the share of generations that satisfy their edit prompt.

Each generation sample is judged 0 (edit not satisfied) or 1 (satisfied), stored as the value "esr";
the ESR of a method is the mean of these values over its generations (the report's table mean, with a
bootstrap CI). SingleInsert judged with people; here the judge is fixed and documented:

- colour edits — the prompt names a colour of :data:`COLOURS` ("a red chair with <v*> style"):
  analytic. Every output pixel is assigned to its nearest palette colour in CIELAB; the edit succeeds
  when at least :data:`COLOUR_SHARE` of the pixels are the requested colour. No model involved: on the
  synthetic sets (and anywhere) this is exact about what it measures — "is there a sizeable area of the
  requested colour", not "is the object that colour".
- object edits — any other prompt: put the concept on ``sample.object_word`` (CLiC's generation).
  CLIP zero-shot over "a photo of a {word}" for the candidate objects (suite option
  ``esr.candidates``, default :data:`DEFAULT_CANDIDATES`, plus the requested word): success when the
  requested object is the top-1 class (the threshold is the best competing candidate). With
  ``--allow-random-metrics`` the CLIP is tiny and random and the value is labelled ``tiny-random``.

:data:`EDIT_PROMPTS` is the fixed list a suite should generate with (see the module's note in the
single-image suite); a sample whose prompt is not an edit of either kind still counts as an object edit.
"""
from __future__ import annotations

import re
from typing import ClassVar, Sequence

import numpy as np
from skimage.color import rgb2lab

from . import models
from ._regions import sample_image
from .base import MetricSettings, MetricValue, Sample
from .clip_sim import embed_images, embed_texts

ESR_OPTIONS_KEY = "esr"
COLOUR_SHARE = 0.25  # share of pixels of the requested colour for a colour edit to count
COLOURS: dict[str, tuple[float, float, float]] = {  # sRGB in [0, 1]
    "red": (0.85, 0.10, 0.10), "green": (0.10, 0.65, 0.15), "blue": (0.10, 0.20, 0.85),
    "yellow": (0.95, 0.90, 0.10), "orange": (0.95, 0.55, 0.05), "purple": (0.50, 0.15, 0.65),
    "pink": (0.95, 0.55, 0.75), "brown": (0.45, 0.28, 0.12), "white": (0.97, 0.97, 0.97),
    "black": (0.03, 0.03, 0.03), "gray": (0.5, 0.5, 0.5),
}
EDIT_PROMPTS: tuple[str, ...] = (
    "a photo of an {object}, with {tokens} style",  # object edit: the suite's generate.objects
    "a red {object} with {tokens} style",
    "a green {object} with {tokens} style",
    "a blue {object} with {tokens} style",
    "a yellow {object} with {tokens} style",
)
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "chair", "sofa", "table", "lamp", "vase", "bed", "ring", "necklace", "bracelet", "earring", "building",
    "house", "tower", "cup", "bowl", "plate", "teapot", "car", "dog", "cat",
)
_PALETTE_LAB = rgb2lab(np.array([list(COLOURS.values())], dtype=np.float64))[0]  # (k, 3)


def requested_colour(prompt: str | None) -> str | None:
    """The first palette colour named as a whole word in ``prompt`` (None for an object edit)."""
    words = re.findall(r"[a-z]+", (prompt or "").lower())
    return next((word for word in words if word in COLOURS), None)


def colour_share(image: np.ndarray, colour: str) -> float:
    """Share of pixels whose nearest palette colour (CIELAB distance) is ``colour``."""
    lab = rgb2lab(image.astype(np.float64)).reshape(-1, 1, 3)
    nearest = np.argmin(((lab - _PALETTE_LAB[None]) ** 2).sum(-1), axis=1)
    return float((nearest == list(COLOURS).index(colour)).mean())


def zero_shot_success(image_embedding: np.ndarray, text_embeddings: np.ndarray, target: int) -> bool:
    """True when the target class has the highest cosine (ties go against the edit)."""
    scores = text_embeddings @ image_embedding
    others = np.delete(scores, target)
    return bool(others.size == 0 or scores[target] > others.max())


class EditingSuccessRate:
    """Per generation: 1 if its edit (colour or object, see the module docstring) is satisfied, else 0."""

    name: ClassVar[str] = "esr"
    values: ClassVar[dict[str, bool]] = {"esr": True}
    version: ClassVar[str] = "1.0"
    scale: ClassVar[str] = ("{0, 1} per generated image, a job's value the mean of its images; "
                            "the mean is the editing success rate (higher is better)")
    tasks: ClassVar[frozenset[str]] = frozenset({"generate"})

    # Which weight files it loads, checked by the driver before anything runs (harness.plan.preflight).
    missing_weights = staticmethod(models.missing_clip_weights)

    def __init__(self, settings: MetricSettings) -> None:
        options = settings.for_metric(ESR_OPTIONS_KEY)
        self.candidates = tuple(options.get("candidates", DEFAULT_CANDIDATES))
        self.clip = models.load_clip(settings)
        self.weights = self.clip.weights

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        results: list[list[MetricValue]] = [[] for _ in samples]
        object_edits: list[tuple[int, np.ndarray, str]] = []
        for index, sample in enumerate(samples):
            output = sample_image(sample, "output_image") if sample.task in self.tasks else None
            if output is None:
                continue
            colour = requested_colour(sample.prompt)
            if colour is not None:
                results[index].append(MetricValue("esr", float(colour_share(output, colour) >= COLOUR_SHARE)))
            elif sample.object_word:
                object_edits.append((index, output, sample.object_word))
        if object_edits:
            words = list(dict.fromkeys([*self.candidates, *(word for _, _, word in object_edits)]))
            text = embed_texts(self.clip, [f"a photo of a {word}" for word in words]).numpy()
            images = embed_images(self.clip, [output for _, output, _ in object_edits]).numpy()
            for (index, _, word), image in zip(object_edits, images):
                results[index].append(MetricValue("esr", float(zero_shot_success(image, text, words.index(word)))))
        return results
