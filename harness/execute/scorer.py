"""The metric actor: every metric of a run loaded once, scoring job samples and groups of finished jobs."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..plan.jobs import TaskJob, content_id
from .worker_files import as_float_image, generated_images

METRIC_ACTOR_PREFIX = "clic-metrics-"  # + a hash of the metric configuration: the metric actor's name


def group_member_spec(job: TaskJob, run_dir: str | Path, remote: str | None = None) -> dict[str, Any]:
    """What a group metric needs of one finished member job, as file paths (read by the metric actor); with
    ``remote`` (a run folder on object storage) URIs for images the driver's staging folder lacks."""
    images = [str(path) for path in generated_images(run_dir, job.job_id)]
    if not images and remote:  # the job ran on another node: its images are under the prefix
        from ..remote_folder import generated_image_uris

        images = generated_image_uris(remote, job.job_id)
    return {
        "job_id": job.job_id,
        "task": job.task,
        "object_word": job.object_word,
        "artifacts": str(store.artifact_dir(run_dir, job.job_id)),
        "images": images,
        "source_image": job.source_image,
        "source_mask": job.source_mask,
    }


def group_samples(specs: Sequence[Mapping[str, Any]], group: str) -> list:
    """The samples of a group, one per image of each member, loaded from the members' artifacts: a group
    completed across runs (resume) is scored the same way as one completed in a single run."""
    from ..metrics.base import Sample
    from .worker_files import load_image, load_mask  # manifest URIs (s3:// …) as well as paths

    sources: dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray | None]] = {}  # members share sources
    samples = []
    for spec in specs:
        if not spec["images"]:
            raise FileNotFoundError(f"{spec['artifacts']}: no generated image (the job's artifacts were removed)")
        key = (spec["source_image"], spec["source_mask"])
        if key not in sources:
            source = load_image(spec["source_image"])
            mask = load_mask(spec["source_mask"], size=source.size) if spec["source_mask"] else None
            sources[key] = (as_float_image(source), mask)
        source_image, source_mask = sources[key]
        for path in spec["images"]:
            samples.append(
                Sample(
                    job_id=spec["job_id"],
                    task=spec["task"],
                    object_word=spec["object_word"],
                    output_image=as_float_image(load_image(path)),
                    source_image=source_image,
                    source_mask=source_mask,
                    group=group,
                )
            )
    return samples


class MetricScorer:
    """Holds every requested metric (models loaded once) and scores batches of samples."""

    def __init__(self, targets: Mapping[str, str], allow_random: bool, options: Mapping[str, Any]) -> None:
        """``targets``: metric name -> its class as "module:Class", resolved at plan time (a metric registered
        by a plugin or a test is found in this process too)."""
        from ..metrics import metric_from_target
        from ..metrics.base import MetricSettings, declaration

        settings = MetricSettings(allow_random=allow_random, options=dict(options), device=_actor_device())
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
            results.append([{"values": v, "seconds": share} for v in values[offset : offset + len(job_samples)]])
            offset += len(job_samples)
        return results

    def score_group(self, names: Sequence[str], group: str, specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The group metrics ``names`` over one group's members (file specs, see :func:`group_member_spec`)."""
        start = time.perf_counter()
        samples = group_samples(specs, group)
        values = [(name, v.name, float(v.value)) for name in names for v in self.metrics[name].compute_group(samples)]
        return {"values": values, "seconds": time.perf_counter() - start}


def _actor_device() -> str:
    """``cuda`` in an actor Ray gave a GPU (fraction), else ``cpu``: model metrics run where the actor was placed."""
    try:
        import ray

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # not in a Ray process (a direct call in a test)
        gpus = []
    if gpus:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


_METRIC_SCORERS: dict[str, list[Any]] = {}  # at most one pool: configuration key -> its actors, kept for the next run


def metric_scorers(
    targets: Mapping[str, str], allow_random: bool, options: Mapping[str, Any], count: int = 1, num_gpus: float = 0.0
) -> list[Any]:
    """The pool of metric actors for this configuration, started once per driver: a second run in the same driver
    (a notebook, a sweep of suites) reuses it instead of loading the metric models again. Another configuration
    replaces it. Each actor holds every metric (each model once per actor); ``num_gpus`` > 0 places each on a
    GPU slot (its models on that GPU). Named, so that an operator (or a test) can find them:
    ``ray.util.list_named_actors()``."""
    import ray

    key = content_id([ray.get_runtime_context().get_job_id(), dict(targets), allow_random, options, count, num_gpus])[
        :12
    ]
    if key in _METRIC_SCORERS:
        return _METRIC_SCORERS[key]
    for stale in [actor for pool in _METRIC_SCORERS.values() for actor in pool]:
        try:
            ray.kill(stale)
        except Exception:  # already gone with its cluster
            pass
    _METRIC_SCORERS.clear()
    # No CPU slot taken from the jobs; restarted on another node if its node is lost (its calls are retried).
    resources = {"num_cpus": 0, **({"num_gpus": num_gpus} if num_gpus > 0 else {})}
    _METRIC_SCORERS[key] = [
        ray.remote(MetricScorer)
        .options(
            name=f"{METRIC_ACTOR_PREFIX}{key}" + (f"-{index}" if index else ""),
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            **resources,
        )
        .remote(dict(targets), allow_random, options)
        for index in range(count)
    ]
    return _METRIC_SCORERS[key]


def metric_scorer(targets: Mapping[str, str], allow_random: bool, options: Mapping[str, Any]) -> Any:
    """One metric actor (a pool of one) for this configuration."""
    return metric_scorers(targets, allow_random, options)[0]


# A metric actor on a GPU cluster takes this fraction of a GPU when any metric loads a network (CLIP, LPIPS, DINO).
METRIC_ACTOR_GPUS = 0.1


def metric_pool_shape(
    requested: int | None, metric_targets: Mapping[str, str], cluster: Mapping[str, float]
) -> tuple[int, float]:
    """(actors, GPU fraction each): ``requested`` (the suite's ``metric_actors``), else one per 4 GPUs (1 to 4) on a
    GPU cluster and 1 without GPUs; on a GPU cluster, actors whose metrics load a network get a GPU slot each."""
    from ..metrics import metric_from_target

    gpus = float(cluster.get("GPU", 0))
    count = requested or (max(1, min(4, int(gpus // 4))) if gpus else 1)
    loads_network = any(hasattr(metric_from_target(target), "missing_weights") for target in metric_targets.values())
    return count, (METRIC_ACTOR_GPUS if gpus and loads_network else 0.0)


def forget_metric_scorer() -> None:
    """Drop the cached actor (it could not start: the next run starts a new one)."""
    _METRIC_SCORERS.clear()
