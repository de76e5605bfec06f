"""The metric actor: every metric of a run loaded once, scoring job samples and groups of finished jobs."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import store
from ..plan.jobs import TaskJob, content_id
from .worker import _as_float_image, generated_images

METRIC_ACTOR_PREFIX = "clic-metrics-"  # + a hash of the metric configuration: the metric actor's name


def group_member_spec(job: TaskJob, run_dir: str | Path) -> dict[str, Any]:
    """What a group metric needs of one finished member job, as file paths (read by the metric actor)."""
    return {"job_id": job.job_id, "task": job.task, "object_word": job.object_word,
            "artifacts": str(store.artifact_dir(run_dir, job.job_id)),
            "images": [str(path) for path in generated_images(run_dir, job.job_id)],
            "source_image": job.source_image, "source_mask": job.source_mask}


def group_samples(specs: Sequence[Mapping[str, Any]], group: str) -> list:
    """The samples of a group, one per image of each member, loaded from the members' artifacts: a group
    completed across runs (resume) is scored the same way as one completed in a single run."""
    from clic.io import load_image, load_mask
    from ..metrics.base import Sample

    sources: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray | None]] = {}  # members share sources
    samples = []
    for spec in specs:
        if not spec["images"]:
            raise FileNotFoundError(f"{spec['artifacts']}: no generated image (the job's artifacts were removed)")
        key = (spec["source_image"], spec["source_mask"])
        if key not in sources:
            source = load_image(spec["source_image"])
            mask = load_mask(spec["source_mask"], size=source.size) if spec["source_mask"] else None
            sources[key] = (_as_float_image(source), mask)
        source_image, source_mask = sources[key]
        for path in spec["images"]:
            samples.append(Sample(job_id=spec["job_id"], task=spec["task"], object_word=spec["object_word"],
                                  output_image=_as_float_image(load_image(path)), source_image=source_image,
                                  source_mask=source_mask, group=group))
    return samples


class MetricScorer:
    """Holds every requested metric (models loaded once) and scores batches of samples."""

    def __init__(self, targets: Mapping[str, str], allow_random: bool, options: Mapping[str, Any]) -> None:
        """``targets``: metric name -> its class as "module:Class", resolved at plan time (a metric registered
        by a plugin or a test is found in this process too)."""
        from ..metrics import metric_from_target
        from ..metrics.base import MetricSettings, declaration

        settings = MetricSettings(allow_random=allow_random, options=dict(options))
        classes = {name: metric_from_target(target) for name, target in targets.items()}
        self.per_job = [name for name, cls in classes.items() if declaration(cls).group_by is None]
        self.metrics = {name: cls(settings) for name, cls in classes.items()}

    def weights(self) -> dict[str, str]:
        return {name: metric.weights for name, metric in self.metrics.items()}

    def score(self, *per_job: list) -> list[list[dict[str, Any]]]:
        """Per job, per sample: {"values": [(metric, value name, value)], "seconds": share of the batch time}.

        Each argument is one job's samples; the driver passes the workers' object refs, which Ray resolves
        here, so images go from worker to actor without passing through the driver."""
        start = time.perf_counter()
        samples = [sample for job_samples in per_job for sample in job_samples]
        values: list[list[tuple[str, str, float]]] = [[] for _ in samples]
        for name in self.per_job:
            for index, scored in enumerate(self.metrics[name].compute(samples)):
                values[index].extend((name, v.name, float(v.value)) for v in scored)
        share = (time.perf_counter() - start) / max(len(samples), 1)
        results, offset = [], 0
        for job_samples in per_job:
            results.append([{"values": v, "seconds": share} for v in values[offset:offset + len(job_samples)]])
            offset += len(job_samples)
        return results

    def score_group(self, names: Sequence[str], group: str, specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The group metrics ``names`` over one group's members (file specs, see :func:`group_member_spec`)."""
        start = time.perf_counter()
        samples = group_samples(specs, group)
        values = [(name, v.name, float(v.value)) for name in names for v in self.metrics[name].compute_group(samples)]
        return {"values": values, "seconds": time.perf_counter() - start}


_METRIC_SCORERS: dict[str, Any] = {}  # at most one: configuration key -> the actor, kept for the next run


def metric_scorer(targets: Mapping[str, str], allow_random: bool, options: Mapping[str, Any]) -> Any:
    """The metric actor for this configuration, started once per driver: a second run in the same driver
    (a notebook, a sweep of suites) reuses it instead of loading the metric models again. Another
    configuration replaces it. Named, so that an operator (or a test) can find it:
    ``ray.util.list_named_actors()``."""
    import ray

    key = content_id([ray.get_runtime_context().get_job_id(), dict(targets), allow_random, options])[:12]
    if key in _METRIC_SCORERS:
        return _METRIC_SCORERS[key]
    for stale in _METRIC_SCORERS.values():
        try:
            ray.kill(stale)
        except Exception:  # already gone with its cluster
            pass
    _METRIC_SCORERS.clear()
    # It takes no CPU slot from the jobs, and it is restarted on another node if its node is lost (its
    # calls are retried).
    _METRIC_SCORERS[key] = ray.remote(MetricScorer).options(
        name=f"{METRIC_ACTOR_PREFIX}{key}", get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=-1,
    ).remote(dict(targets), allow_random, options)
    return _METRIC_SCORERS[key]


def forget_metric_scorer() -> None:
    """Drop the cached actor (it could not start: the next run starts a new one)."""
    _METRIC_SCORERS.clear()
