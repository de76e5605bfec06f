"""Metric registry: name -> "module:Class". Adding a metric is one file plus one line here."""

from __future__ import annotations

import importlib
from typing import Any

from .base import MetricSettings

REGISTRY: dict[str, str] = {
    "clip_image": "clip_sim:ClipImageSimilarity",
    "clip_text": "clip_sim:ClipTextSimilarity",
    "lpips": "lpips_metric:LpipsMasked",
    "lpips_diversity": "lpips_metric:LpipsDiversity",
    "ssim_psnr": "ssim_psnr:SsimPsnrOutside",
    "mask_iou": "mask_iou:MaskIoU",
    "estimated_mask_iou": "mask_estimation:EstimatedMaskIoU",
    "pattern_fidelity": "oracle:PatternFidelity",
    "pattern_leakage": "oracle:PatternLeakage",
    "oracle_preservation": "oracle:OraclePreservation",
    "clip_masked": "masked_similarity:ClipMaskedSimilarity",
    "dino_masked": "masked_similarity:DinoMaskedSimilarity",
    "esr": "esr:EditingSuccessRate",
    "concept_classification": "concept_classification:ConceptClassification",
    "attention_in_mask": "attention_in_mask:AttentionInMask",
}


PLUGINS: dict[str, str] = {}  # name -> "package.module:Class" of metrics registered from outside this package


def available_metrics() -> list[str]:
    return sorted({*REGISTRY, *PLUGINS})


def register_metric(name: str, target: str) -> None:
    """Register a metric defined outside this package (a plugin, or a test's toy metric) as "module:Class".
    A run resolves each metric's target at plan time and hands it to the metric actor."""
    PLUGINS[name] = target


def metric_target(name: str) -> str:
    """The full "package.module:Class" of a registered metric."""
    if name in PLUGINS:
        return PLUGINS[name]
    try:
        target = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(available_metrics())}") from None
    module_name, _, class_name = target.partition(":")
    return target if "." in module_name else f"{__name__}.{module_name}:{class_name}"


def metric_from_target(target: str) -> type:
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def metric_class(name: str) -> type:
    return metric_from_target(metric_target(name))


def build_metric(name: str, settings: MetricSettings | None = None) -> Any:
    return metric_class(name)(settings or MetricSettings())
