"""The suite's data model: frozen dataclasses with their defaults, and :meth:`Suite.to_dict`, the canonical JSON
form job ids are hashed from. The keys, defaults and meaning of each are in :mod:`harness.plan.suite`'s docstring;
checking a mapping against them is :mod:`harness.plan.suite_reader`'s."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

TASKS = ("transfer", "generate", "match")
DEFAULT_TASKS = ("transfer",)
# clic.models.TINY_PRESETS, repeated so that importing this module does not import torch (reading a suite does: it
# resolves every method's settings through the method's class, harness.plan.resolve.resolve_runs).
TINY_MODELS = ("tiny", "tiny-inpaint", "tiny-v")
DEFAULT_METRICS = ("clip_image", "clip_text", "lpips", "ssim_psnr", "mask_iou")
ESR_PROMPTS_KEYWORD = "esr"  # generate.prompts: esr -> the editing prompts the esr metric judges
PROMPT_FIELDS = frozenset({"object", "tokens", "token"})  # what clic.learn.format_prompt fills in


# ------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class MethodSpec:
    name: str
    presets: tuple[str, ...]
    loss_weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    learn: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    resources: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # num_gpus/num_cpus per job

    def learn_overrides(self, base_terms: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``learn`` overrides with ``loss_weights`` folded into ``terms``.

        ``base_terms`` are the preset's terms: a term given there as ``{"weight": w, ...}`` keeps its
        other parameters (e.g. the context loss's alpha) and only changes its weight.
        """
        overrides = thaw(self.learn)
        if not self.loss_weights:
            return overrides
        terms = dict(overrides.get("terms") or {})
        for term, weight in self.loss_weights.items():
            spec = terms.get(term, (base_terms or {}).get(term))
            terms[term] = {**dict(spec), "weight": weight} if isinstance(spec, Mapping) else weight
        overrides["terms"] = terms
        return overrides


@dataclass(frozen=True)
class TransferSpec:
    t_start: tuple[int, ...] | None = None  # None: each preset's own value
    eta: tuple[float, ...] | None = None  # None: each preset's own value
    steps: int = 50
    guidance_scale: float = 7.5


@dataclass(frozen=True)
class GenerateSpec:
    objects: tuple[str, ...] = ()  # empty: each pair's target_object
    prompts: tuple[str, ...] = ()  # empty: each method preset's own prompt template
    stage_one_steps: int | None = None  # None: the method preset's (CLiC's paper preset: 5)
    steps: int = 50
    images_per_seed: int = 1


@dataclass(frozen=True)
class MatchSpec:
    enabled: bool = True
    steps: int = 500


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2  # retries of a task whose worker died (system failures; errors are not retried)
    memory_gb: float | None = None  # host memory per job (Ray's `memory`): jobs are packed so that it fits
    custom: Mapping[str, float] = field(default_factory=dict)  # Ray custom resources per job, e.g. {A100: 1}
    gpu_memory_gib: float | None = None  # one GPU's memory: jobs of methods that declare theirs are packed by it


@dataclass(frozen=True)
class Suite:
    name: str
    manifests: tuple[str, ...]  # absolute local paths or URIs
    methods: tuple[MethodSpec, ...]
    model: str = "tiny"
    inpainting_model: str | None = None  # for methods on an inpainting UNet (RealFill); tiny -> tiny-inpaint
    resolution: int | None = None  # image side the methods run at; None: the model's native resolution
    device: str = "auto"  # clic.device.resolve_device in each worker
    dtype: str = "fp32"  # fp32 | fp16 | bf16: part of every concept id
    tf32: bool = (
        True  # TF32 matmul/cuDNN on GPUs that have it (Ampere+); false: exact fp32 (clic.device.configure_tf32)
    )
    metric_actors: int | None = None  # metric actors scoring in parallel; None: 1, or one per 4 GPUs (up to 4)
    description: str = ""
    seeds: tuple[int, ...] = (0,)
    transfer: TransferSpec = TransferSpec()
    generate: GenerateSpec = GenerateSpec()
    match: MatchSpec = MatchSpec()
    metrics: tuple[str, ...] = DEFAULT_METRICS
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    resources: Resources = Resources()
    tasks: tuple[str, ...] = DEFAULT_TASKS
    limit_pairs: int | None = None
    # "use": methods learn from the manifest's source masks; "estimate": they learn without them (EM,
    # ConceptExpress, CLiC's automatic source mask) and the masks serve only as ground truth for metrics.
    source_masks: str = "use"
    categories: tuple[str, ...] | None = None
    source: str = field(default="", compare=False)  # the suite file, for messages
    # Per method entry, per preset: the settings resolved once when the suite is read (harness.plan.resolve).
    runs: tuple = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-serialisable form, keyed as in the suite file (manifests always as ``manifests: [...]``)."""
        return {
            "name": self.name,
            "description": self.description,
            "manifests": list(self.manifests),
            "model": self.model,
            "inpainting_model": self.inpainting_model,
            "resolution": self.resolution,
            "device": self.device,
            "dtype": self.dtype,
            "tf32": self.tf32,
            "metric_actors": self.metric_actors,
            "methods": [
                {
                    "name": m.name,
                    "presets": list(m.presets),
                    "loss_weights": thaw(m.loss_weights),
                    "learn": thaw(m.learn),
                    **({"resources": dict(m.resources)} if m.resources else {}),
                }
                for m in self.methods
            ],
            "seeds": list(self.seeds),
            "transfer": thaw(dataclasses.asdict(self.transfer)),
            "generate": thaw(dataclasses.asdict(self.generate)),
            "match": dataclasses.asdict(self.match),
            "metrics": list(self.metrics),
            "metric_options": thaw(self.metric_options),
            "resources": dataclasses.asdict(self.resources),
            "tasks": list(self.tasks),
            "limit_pairs": self.limit_pairs,
            "source_masks": self.source_masks,
            "categories": list(self.categories) if self.categories is not None else None,
        }


def freeze(value: Any) -> Any:
    """A read-only copy of a YAML value (mappings become MappingProxyType, lists tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain dict/list copy of a frozen value (for JSON and for merging)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value
