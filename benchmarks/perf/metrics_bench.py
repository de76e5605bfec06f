"""Metric throughput: images/s per metric with batching vs one sample at a time; model loads counted."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

BATCHED_METRICS = ("clip_image", "lpips", "ssim_psnr", "pattern_fidelity")


def _samples(count: int, size: int = 64) -> list:
    from harness.metrics.base import Sample

    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), dtype=bool)
    mask[16:48, 12:40] = True
    samples = []
    for index in range(count):
        target = rng.random((size, size, 3), dtype=np.float32)
        output = target.copy()
        output[mask] = rng.random((int(mask.sum()), 3), dtype=np.float32)
        samples.append(Sample(job_id=str(index), task="transfer", output_image=output, source_image=target,
                              source_mask=mask, target_image=target, target_mask=mask, expected_image=output,
                              gt_mask=mask))
    return samples


def metric_throughput(count: int = 64) -> list[dict[str, Any]]:
    from harness.metrics import build_metric
    from harness.metrics import models as metric_models
    from harness.metrics.base import MetricSettings

    samples = _samples(count)
    rows = []
    for name in BATCHED_METRICS:
        loads_before = sum(metric_models.LOAD_COUNT.values())
        metric = build_metric(name, MetricSettings(allow_random=True))
        metric.compute(samples[:2])  # warm-up
        started = time.perf_counter()
        metric.compute(samples)
        batched = time.perf_counter() - started
        started = time.perf_counter()
        for sample in samples:
            metric.compute([sample])
        single = time.perf_counter() - started
        rows.append({"metric": name, "batched_images_per_s": count / batched, "single_images_per_s": count / single,
                     "batching_speedup": single / batched,
                     "model_loads": sum(metric_models.LOAD_COUNT.values()) - loads_before, "weights": metric.weights})
    return rows
