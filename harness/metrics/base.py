"""The metric contract: what a metric receives, what it returns, and how it is found by name.

A metric is one file in this package plus one line in ``REGISTRY`` (``harness/metrics/__init__.py``); a
metric from elsewhere is registered with ``register_metric``. A metric class declares everything about
itself as class attributes, read once through :func:`declaration`: ``name``, ``version``, ``scale``,
``values`` (each value name it emits -> whether higher is better), ``tasks`` (the outputs it scores:
transfer / generate / match), ``group_by`` (None, or the kind of group it scores as a set) and, set by
``__init__``, ``weights`` (the model weights it loaded). A metric whose numbers depend on a suite option (LPIPS'
trunk) also declares ``version_for(metric_options)``, the version its rows record under those options; a metric
that loads weights also declares ``missing_weights(settings)``, one line per weight file it would not find, which
the driver checks before a run starts (``harness.plan.preflight``). Metric classes are plain Python: they load their
models once in ``__init__`` and score batches in ``compute`` (``compute_group`` for group metrics); the
harness runs them in one metric actor. Images cross this boundary as float32 arrays in
[0, 1] (H, W, 3) and masks as bool arrays (H, W); ``check_image``/``check_mask`` assert that, so a
metric never silently scores a 0–255 image as if it were 0–1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from clic import TINY_RANDOM  # noqa: F401 - the weights label of every metric model built with random weights

NO_MODEL = "none"  # the weights label of a closed-form metric


@dataclass(frozen=True)
class MetricSettings:
    """How metric models are obtained. ``allow_random`` permits tiny random-weight models (labelled)."""

    allow_random: bool = False
    device: str = "cpu"
    # Optional per-metric options from the suite file, e.g. {"clip": {"model": "ViT-B-32", "pretrained": "/path"}}.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_metric(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))


@dataclass
class Sample:
    """One method output and everything a metric may compare it with (None where not applicable)."""

    job_id: str
    task: str  # "transfer" | "generate" | "match"
    output_image: np.ndarray | None = None  # edited / generated image
    source_image: np.ndarray | None = None
    source_mask: np.ndarray | None = None
    target_image: np.ndarray | None = None
    target_mask: np.ndarray | None = None  # the mask the method edited inside
    predicted_mask: np.ndarray | None = None  # RoI matching output (bool)
    estimated_masks: list[np.ndarray] | None = None  # source masks a method estimated (bool, source size)
    gt_mask: np.ndarray | None = None  # ground-truth target mask
    expected_image: np.ndarray | None = None  # synthetic sets: the target with the pattern drawn on its part
    attention: np.ndarray | None = None  # transfer: the token's attention map in [0, 1], at the target's size
    prompt: str | None = None
    object_word: str | None = None
    group: str | None = None  # samples sharing a group form a set (e.g. one pair × method over seeds)


@dataclass(frozen=True)
class MetricValue:
    name: str  # e.g. "lpips_outside"
    value: float


@runtime_checkable
class Metric(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    scale: ClassVar[str]  # e.g. "cosine [-1, 1] (raw, not x100)"
    values: ClassVar[dict[str, bool]]  # value name it emits -> higher is better
    tasks: ClassVar[frozenset[str]]  # tasks this metric scores
    weights: str  # TINY_RANDOM or a real model id / path, set by __init__

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        """One list of values per sample (empty where the sample lacks what the metric needs)."""
        ...


class GroupMetric(Protocol):
    """A metric over a set of samples (e.g. diversity across seeds): one list of values per group."""

    name: ClassVar[str]
    version: ClassVar[str]
    scale: ClassVar[str]
    values: ClassVar[dict[str, bool]]
    tasks: ClassVar[frozenset[str]]
    weights: str
    group_by: ClassVar[str]  # which jobs form a group: harness.groups.GROUP_KINDS ("seeds", "concepts")

    def compute_group(self, samples: Sequence[Sample]) -> list[MetricValue]: ...


@dataclass(frozen=True)
class MetricDeclaration:
    """What a metric class declares about itself (see the module docstring)."""

    name: str
    version: str
    scale: str
    values: dict[str, bool]
    tasks: frozenset[str]
    group_by: str | None


DECLARED = ("name", "version", "scale", "values", "tasks")


def declaration(cls: type, metric_options: Mapping[str, Mapping[str, Any]] | None = None) -> MetricDeclaration:
    """A metric class's declaration (its version under the suite's ``metric_options`` when it declares
    ``version_for``); a class that leaves one out is a TypeError naming what is missing."""
    missing = [attribute for attribute in DECLARED if not hasattr(cls, attribute)]
    if missing:
        raise TypeError(f"metric class {cls.__module__}.{cls.__qualname__} does not declare {', '.join(missing)}")
    version_for = getattr(cls, "version_for", None)
    version = version_for(metric_options or {}) if version_for is not None else cls.version
    return MetricDeclaration(
        cls.name, version, cls.scale, dict(cls.values), frozenset(cls.tasks), getattr(cls, "group_by", None)
    )


def check_image(array: np.ndarray, what: str = "image") -> np.ndarray:
    """Assert an image is float (H, W, 3) in [0, 1]; returns it as float32."""
    if not isinstance(array, np.ndarray) or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{what}: expected an (H, W, 3) array, got {getattr(array, 'shape', type(array))}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what}: expected floats in [0, 1], got dtype {array.dtype}")
    lo, hi = float(array.min()), float(array.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{what}: values must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
    return array.astype(np.float32, copy=False)


def check_mask(array: np.ndarray, what: str = "mask") -> np.ndarray:
    """Assert a mask is a bool (H, W) array."""
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype != np.bool_:
        raise ValueError(
            f"{what}: expected a bool (H, W) array, got {getattr(array, 'dtype', type(array))} "
            f"{getattr(array, 'shape', '')}"
        )
    return array


class ClosedFormMetric(ABC):
    """Base of a metric computed without a model, one sample at a time: subclasses set the class
    attributes of :class:`Metric` and write ``_score``. Samples of other tasks get no values."""

    name: ClassVar[str]
    version: ClassVar[str]
    scale: ClassVar[str]
    tasks: ClassVar[frozenset[str]]
    weights_label: ClassVar[str] = NO_MODEL
    options: ClassVar[dict] = {}  # closed-form: no model, no options (harness.metrics.options)

    def __init__(self, settings: MetricSettings) -> None:
        self.settings = settings
        self.weights = self.weights_label

    def compute(self, samples: Sequence[Sample]) -> list[list[MetricValue]]:
        return [self._score(sample) if sample.task in self.tasks else [] for sample in samples]

    @abstractmethod
    def _score(self, sample: Sample) -> list[MetricValue]:
        """The values of one sample of a scored task (empty when it lacks what the metric needs)."""
