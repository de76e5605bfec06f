"""Metric throughput: images/s per metric with batching vs one sample at a time; model loads counted."""

from __future__ import annotations

import json
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
        samples.append(
            Sample(
                job_id=str(index),
                task="transfer",
                output_image=output,
                source_image=target,
                source_mask=mask,
                target_image=target,
                target_mask=mask,
                expected_image=output,
                gt_mask=mask,
            )
        )
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
        rows.append(
            {
                "metric": name,
                "batched_images_per_s": count / batched,
                "single_images_per_s": count / single,
                "batching_speedup": single / batched,
                "model_loads": sum(metric_models.LOAD_COUNT.values()) - loads_before,
                "weights": metric.weights,
            }
        )
    return rows


# --------------------------------------------------------------------------- the metric actor pool, 1 vs 2
POOL_METRICS = ("lpips", "clip_image")  # the model metrics of the smoke suite (random weights: same FLOPs)

_POOL_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
from benchmarks.perf.metrics_bench import POOL_METRICS, _samples
from harness.execute.scorer import forget_metric_scorer, metric_scorers
from harness.metrics import metric_target
targets = {{name: metric_target(name) for name in POOL_METRICS}}
batch = ray.put(_samples({batch_size}, size={size}))
seconds, values = {{}}, {{}}
for count in (1, 2):
    forget_metric_scorer()
    actors = metric_scorers(targets, True, {{}}, count)
    ray.get([actor.score.remote(batch) for actor in actors])  # models loaded, warm
    best = float("inf")
    for _ in range({repeats}):
        load = [0] * count
        started = time.perf_counter()
        refs = []
        for index in range({batches}):  # the runner's rule: the actor with the fewest calls in flight
            pick = min(range(count), key=load.__getitem__)
            load[pick] += 1
            refs.append(actors[pick].score.remote(batch))
        results = ray.get(refs)
        best = min(best, time.perf_counter() - started)
    seconds[count] = best
    values[count] = [[v for v in sample["values"]] for sample in results[-1][0]]
print(json.dumps({{"seconds": seconds, "same_values": values[1] == values[2]}}))
"""


def _score_after_barrier(barrier, batches: int, batch_size: int, size: int, queue) -> None:
    """One plain process (no Ray): the same metric models, scoring ``batches`` batches after the barrier."""
    import torch

    torch.set_num_threads(1)
    from harness.execute.scorer import MetricScorer
    from harness.metrics import metric_target

    scorer = MetricScorer({name: metric_target(name) for name in POOL_METRICS}, True, {})
    samples = _samples(batch_size, size=size)
    scorer.score(samples)  # warm
    barrier.wait()
    started = time.perf_counter()
    for _ in range(batches):
        scorer.score(samples)
    queue.put(time.perf_counter() - started)


def metric_pool_scaling(batches: int = 12, batch_size: int = 8, size: int = 128, repeats: int = 2) -> dict[str, Any]:
    """Scoring throughput of 1 vs 2 metric actors on a 2-CPU local cluster (``batches`` batches of
    ``batch_size`` images, LPIPS + CLIP with random weights), beside what this machine gives two plain processes
    doing the same scoring (one process all batches vs two processes half each, at once), measured in the same run:
    the pool's speedup over the machine's is the share of the achievable the pool achieves."""
    import multiprocessing
    import os
    import subprocess
    import sys

    from .harness_bench import ROOT

    script = _POOL_SCRIPT.format(root=str(ROOT), batch_size=batch_size, size=size, batches=batches, repeats=repeats)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
        env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"metric pool run failed: {out.stderr.strip().splitlines()[-3:]}")
    pool = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))
    context = multiprocessing.get_context("spawn")
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for processes in (1, 2):
            barrier, queue = context.Barrier(processes), context.Queue()
            workers = [
                context.Process(
                    target=_score_after_barrier, args=(barrier, batches // processes, batch_size, size, queue)
                )
                for _ in range(processes)
            ]
            for worker in workers:
                worker.start()
            times[processes].append(max(queue.get(timeout=1800) for _ in workers))
            for worker in workers:
                worker.join()
    one_actor, two_actors = pool["seconds"]["1"], pool["seconds"]["2"]
    machine_speedup = min(times[1]) / min(times[2])
    pool_speedup = one_actor / two_actors
    return {
        "batches": batches,
        "batch_size": batch_size,
        "size": size,
        "one_actor_s": one_actor,
        "two_actors_s": two_actors,
        "pool_speedup": pool_speedup,
        "one_process_s": min(times[1]),
        "two_processes_s": min(times[2]),
        "machine_speedup": machine_speedup,
        "share_of_machine": pool_speedup / machine_speedup,
        "same_values": pool["same_values"],
        "images_per_s_one_actor": batches * batch_size / one_actor,
        "images_per_s_two_actors": batches * batch_size / two_actors,
    }
