"""Run a suite on Ray: learn each concept once, fan its transfers/generations/matches out, score, store.

Learn tasks return their concept folder and are submitted first; a concept's task jobs are submitted once
it is learned, so the run ends with short jobs filling the slots. At most ``max_in_flight`` Ray tasks are
submitted at once; finished ones are scored by metric actors (models
loaded once) and written by the driver right away, so a killed driver loses only in-flight jobs and a
rerun skips everything already written.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import math
import platform
import socket
import sys
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from . import run_folder, store
from .jobs import (CONCEPTS, GROUP_KINDS, SEEDS, JobGraph, LearnNode, MethodRun, MetricInfo, ModelInfo, Pair, Plan,
                   TaskJob, build_job_graph, code_version, content_id, git_describe, without_object)

if TYPE_CHECKING:
    from .suite import Suite

NO_MODEL_LABEL = "none (no model)"  # the weights label of methods that load no model (cut-and-paste)
METRIC_ACTOR_PREFIX = "clic-metrics-"  # + a hash of the metric configuration: the metric actor's name
GROUP_RESULT_PREFIX = "group-"  # + kind, group id, membership hash: the result id of a group's values


@dataclass
class RunSummary:
    run_dir: Path
    run_id: str
    total_jobs: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    not_applicable: int = 0
    learns_run: int = 0
    groups_scored: int = 0  # groups whose group metrics were computed in this run
    groups_failed: int = 0
    wall_seconds: float = 0.0
    work_seconds: float = 0.0  # learn + task + metric seconds summed over jobs
    overhead_share: float = 0.0
    node_ids: Counter = field(default_factory=Counter)  # node -> task jobs it ran
    learn_node_ids: Counter = field(default_factory=Counter)  # node -> concepts it learned in this run
    peak_in_flight: int = 0  # most task jobs submitted at once (bounded by max_in_flight)
    infrastructure_failed: int = 0  # of `failed`: the machine's failures (disk full, lost worker), rerun next time

    @property
    def jobs_run(self) -> int:
        return self.done + self.failed


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def one_line(error: BaseException) -> str:
    """The last line of an error's message (Ray wraps task errors in a long traceback)."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


# ------------------------------------------------------------------------------------------ suite -> plan
def plan_from_suite(suite: "Suite", resolution: int) -> Plan:
    """The job-graph plan of a checked suite (:class:`harness.suite.Suite`) at an image resolution."""
    from clic.methods import method_class

    from .metrics import metric_class

    methods = []
    for spec in suite.methods:
        for preset in spec.presets:
            base_terms = method_class(spec.name)().learn_config(preset).terms if hasattr(
                method_class(spec.name), "base_config") else None
            methods.append(MethodRun(spec.name, preset, spec.learn_overrides(base_terms)))
    metrics = []
    for name in suite.metrics:
        cls = metric_class(name)
        group_by = cls.group_by if getattr(cls, "group_metric", False) else None
        if group_by is not None and group_by not in GROUP_KINDS:
            raise ValueError(f"metric {name!r}: group_by {group_by!r} is not one of {GROUP_KINDS}")
        metrics.append(MetricInfo(name, cls.version, cls.scale, frozenset(cls.tasks), group_by))
    transfer, generate = suite.transfer, suite.generate
    generate_settings = {"steps": generate.steps, "images": generate.images_per_seed,
                         # unset: each method's preset decides (e.g. SingleInsert's one-stage preset: 0)
                         **({} if generate.stage_one_steps is None else {"stage_one_steps": generate.stage_one_steps})}
    if "generate" in suite.tasks:
        _check_generate_settings(suite, methods, generate_settings)
    return Plan(
        methods=methods, seeds=list(suite.seeds), tasks=frozenset(suite.tasks),
        t_starts=list(transfer.t_start) if transfer.t_start is not None else [None],
        etas=list(transfer.eta) if transfer.eta is not None else [None],
        transfer_settings={"steps": transfer.steps, "guidance_scale": transfer.guidance_scale},
        generate_objects=list(generate.objects), generate_prompts=list(generate.prompts),
        generate_settings=generate_settings,
        match_missing_masks=suite.match.enabled, match_settings={"steps": suite.match.steps},
        metrics=metrics, resolution=resolution, estimate_source_masks=suite.source_masks == "estimate",
    )


def _check_generate_settings(suite: "Suite", methods: Sequence[MethodRun], settings: Mapping[str, Any]) -> None:
    """Each generating method's preset merged with the suite's generation settings must be valid: a suite
    whose generate.steps is shorter than a preset's stage one fails here, not in every generation job."""
    from clic.generate import GenerateSettings
    from clic.methods import method_class

    from .suite import SuiteError

    for run in methods:
        method = method_class(run.name)()
        if not method.supports("generate"):
            continue
        try:
            GenerateSettings.from_dict(method.task_settings("generate", run.preset, settings))
        except ValueError as error:
            raise SuiteError(f"{suite.source}: generate: {error} (method {run.name!r}, preset {run.preset!r}; "
                             f"set generate.stage_one_steps or raise generate.steps)") from None


def _default_preset(method: str) -> str:
    from clic.methods import method_class

    return method_class(method).default_preset


def model_for(method_name: str, suite: "Suite") -> str | None:
    """The model a method runs on: none for no-model methods, the inpainting model where needed."""
    from clic.methods import method_class

    cls = method_class(method_name)
    if not cls.needs_model:
        return None
    if cls.needs_inpainting:
        return suite.inpainting_model or ("tiny-inpaint" if suite.model == "tiny" else suite.model)
    return suite.model


def describe_models(suite: "Suite") -> tuple[dict[str, ModelInfo | None], int]:
    """Model identity per method (weights hash and label, without loading real weights) and the native
    resolution of the suite's main model."""
    from clic.models import describe_model

    descriptions = {}
    by_method: dict[str, ModelInfo | None] = {}
    for spec in suite.methods:
        model_id = model_for(spec.name, suite)
        if model_id is not None and model_id not in descriptions:
            descriptions[model_id] = describe_model(model_id)
        d = descriptions.get(model_id) if model_id else None
        by_method[spec.name] = ModelInfo(d.model_id, d.weights_hash, d.weights_label) if d else None
    main = descriptions.get(suite.model) or describe_model(suite.model)
    return by_method, main.resolution


def method_tasks(plan: Plan) -> dict[str, frozenset[str]]:
    """The tasks each planned method supports."""
    from clic.methods import method_class

    tasks: dict[str, frozenset[str]] = {}
    for run in plan.methods:
        method = method_class(run.name)()
        tasks[run.name] = frozenset(t for t in ("transfer", "generate", "match") if method.supports(t))
    return tasks


# ------------------------------------------------------------------------------------- worker code
def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _model_input(image_path: str, mask_path: str | None, resolution: int):
    from clic.io import load_image, load_mask, to_model_input

    image = load_image(image_path)
    mask = load_mask(mask_path, size=image.size) if mask_path else None
    return image, mask, to_model_input(image, mask, resolution)


def _as_float_image(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


_PRISTINE_MODELS: dict[str, Any] = {}  # per worker process: model id -> SDComponents as loaded


def fresh_components(model_id: str):
    """Components to apply one concept to: the checkpoint is loaded once per worker process and forked
    per job (reloading SD 1.x from disk for every job would cost seconds each)."""
    from clic.models import load_components

    if model_id not in _PRISTINE_MODELS:
        _PRISTINE_MODELS[model_id] = load_components(model_id)
    return _PRISTINE_MODELS[model_id].fork()


def warm_worker(model_id: str | None) -> str:
    """Import the method library and load the model into this worker's cache before jobs arrive, while
    the driver starts the metric actor (a worker's first import of torch/diffusers takes seconds)."""
    importlib.import_module("clic.methods.base")  # the import is the warm-up
    if model_id:
        fresh_components(model_id)
    return _node_id()


def learn_concept_task(node: LearnNode, concepts_root: str) -> dict[str, Any]:
    """Learn one concept into concepts/<concept_id> unless a complete folder is already there."""
    from clic.learn import ConceptSource
    from clic.methods.base import get_method

    final = Path(concepts_root) / node.concept_id
    relearned = None
    if store.concept_is_complete(final):
        from clic.cli_checks import concept_problem

        relearned = concept_problem(final)  # e.g. a weight file truncated by a full disk
        if relearned is None:
            return {"folder": str(final), "seconds": 0.0, "learned": False, "node_id": _node_id()}
        store.publish_folder(final, store.temp_sibling(final))  # moved aside (then cleaned as a stale temp)
    start = time.perf_counter()
    method = get_method(node.method)
    _, _, (image, mask, _) = _model_input(node.source_image, node.source_mask, node.resolution)
    estimated = None
    if mask is None:
        mask, estimated = _mask_for_unmasked_source(method, node, image)
    components = fresh_components(node.model.model_id) if node.model else None
    temp = store.temp_sibling(final)
    method.learn(components, ConceptSource(image, mask, node.object_word), preset=node.preset,
                 overrides=node.learn_overrides, seed=node.seed, out_dir=temp, progress=False)
    if estimated is not None:  # kept with the concept, where the estimated-mask metric reads it
        from clic.concept import LearnedConcept

        concept = LearnedConcept.load(temp)
        concept.arrays["estimated_mask_0"] = estimated
        concept.save(temp)
    store.publish_folder(temp, final)
    return {"folder": str(final), "seconds": time.perf_counter() - start, "learned": True, "node_id": _node_id(),
            "relearned": relearned}


def _mask_for_unmasked_source(method, node: LearnNode, image):
    """The learning mask of a manifest row without ``source_mask`` (and the estimate to keep, if any).

    Methods that estimate their own masks get a whole-image placeholder; methods with RoI matching (CLiC)
    get the automatic source mask of the paper (§3.4), learned on fresh components; others cannot learn.
    """
    import torch

    if method.estimates_masks:
        return torch.ones(1, *image.shape[-2:]), None
    if not method.supports("match") or node.model is None:
        raise ValueError(f"{node.source_image}: no source mask, and method {node.method!r} cannot estimate one")
    from clic.match import MatchSettings, automatic_source_mask

    soft, binary = automatic_source_mask(fresh_components(node.model.model_id), image[None], node.object_word,
                                         MatchSettings.from_dict(node.mask_settings), seed=node.seed)
    if not binary.any():
        raise ValueError(f"{node.source_image}: the automatic source mask is empty")
    return binary[0:1].float(), soft[0].float()


def _save_png(image, path: Path) -> None:
    """Write a PIL image atomically: a killed or retried worker never leaves a half PNG under the real name,
    and a rerun of the job replaces the file whole."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    store.write_bytes_atomic(path, buffer.getvalue())


def _save_map(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    array = np.asarray(array, dtype=np.float32)
    if array.max() > 0:
        array = array / array.max()
    _save_png(Image.fromarray((array.clip(0, 1) * 255).round().astype(np.uint8), mode="L"), path)


def run_task_job(job: TaskJob, concept: Mapping[str, Any], model_id: str | None, resolution: int,
                 run_dir: str) -> dict[str, Any]:
    """Run one task job on its learned concept; write artifacts; return the metric sample and timings."""
    from PIL import Image

    from clic.concept import LearnedConcept
    from clic.io import from_model_output, mask_from_model_output
    from clic.methods.base import get_method
    from .metrics.base import Sample

    start = time.perf_counter()
    method = get_method(job.method)
    learned = LearnedConcept.load(concept["folder"])
    # Fresh components per job: applying a concept mutates them (tokens, attention processors).
    components = fresh_components(model_id) if model_id else None
    out = store.artifact_dir(run_dir, job.job_id)
    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, str] = {}
    sample = Sample(job_id=job.job_id, task=job.task, object_word=job.object_word)
    samples = [sample]  # a generation replaces it with one sample per image
    source, source_mask, (_, _, source_placement) = _model_input(job.source_image, job.source_mask, resolution)
    sample.source_image = _as_float_image(source)
    sample.source_mask = source_mask
    # Masks the method estimated itself (EM, ConceptExpress, CLiC's automatic source mask), at source size.
    sample.estimated_masks = [mask_from_model_output(learned.arrays[key].numpy() >= 0.5, source_placement)
                              for key in sorted(learned.arrays) if key.startswith("estimated_mask")] or None
    overrides = {k: v for k, v in job.settings.items() if k not in ("learn", "object", "match")}

    if job.task in ("transfer", "match"):
        target, target_mask, (image, mask, placement) = _model_input(job.target_image, job.target_mask, resolution)
        sample.target_image = _as_float_image(target)
        sample.target_mask = target_mask
        if job.target_mask_gt:
            from clic.io import load_mask

            sample.gt_mask = load_mask(job.target_mask_gt, size=target.size)
        if job.expected_image:
            from clic.io import load_image

            sample.expected_image = _as_float_image(load_image(job.expected_image).resize(target.size))
    if job.task == "transfer":
        if mask is None:  # no target mask in the manifest: RoI matching predicts it first
            matched = method.match(components, learned, image, job.object_word, preset=job.preset,
                                   overrides=job.settings["match"], seed=job.seed)
            mask = matched.mask[None].float()
            target_mask = mask_from_model_output(matched.mask, placement)
            sample.target_mask = target_mask
            learned = LearnedConcept.load(concept["folder"])
            components = fresh_components(model_id)
        result = method.transfer(components, learned, image, mask[0], job.object_word, preset=job.preset,
                                 overrides=overrides, seed=job.seed)
        edited = from_model_output(result.image, placement)
        sample.output_image = _as_float_image(edited)
        _save_png(edited, out / "edited.png")
        _save_map(result.attention.detach().cpu().numpy(), out / "attention.png")
        _save_png(Image.fromarray(target_mask.astype(np.uint8) * 255), out / "mask.png")
        artifacts = {"artifact_image": "edited.png", "artifact_attention": "attention.png", "artifact_mask": "mask.png"}
    elif job.task == "generate":
        result = method.generate(components, learned, job.object_word, preset=job.preset, overrides=overrides,
                                 seed=job.seed)
        sample.prompt = result.prompt
        images = result.images.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32)
        samples = []
        for index, image in enumerate(images):  # every image is scored; the job's value is their mean
            _save_png(Image.fromarray((image * 255).round().astype(np.uint8)), out / generated_image_name(index))
            samples.append(dataclasses.replace(sample, output_image=image))
        artifacts = {"artifact_image": generated_image_name(0)}
        if getattr(result, "attention", None) is not None:
            _save_map(result.attention[0].detach().cpu().numpy(), out / "attention.png")
            artifacts["artifact_attention"] = "attention.png"
    else:  # match
        result = method.match(components, learned, image, job.object_word, preset=job.preset,
                              overrides=overrides, seed=job.seed)
        sample.predicted_mask = mask_from_model_output(result.mask, placement)
        _save_png(Image.fromarray(sample.predicted_mask.astype(np.uint8) * 255), out / "mask.png")
        artifacts = {"artifact_mask": "mask.png"}
    prefix = Path(store.ARTIFACTS_DIR) / job.job_id
    artifact_paths = {key: str(prefix / name) for key, name in artifacts.items()}
    losses = Path(concept["folder"]) / "losses.csv"
    if losses.is_file():
        artifact_paths["artifact_losses"] = str(Path(store.CONCEPTS_DIR) / job.concept_id / losses.name)
    return {"samples": samples, "artifacts": artifact_paths, "task_seconds": time.perf_counter() - start,
            "learn_seconds": float(concept["seconds"]), "node_id": _node_id()}


def generated_image_name(index: int) -> str:
    """Artifact file of a generation's ``index``-th image (the first keeps the name every task uses)."""
    return "edited.png" if index == 0 else f"edited-{index}.png"


def generated_images(run_dir: str | Path, job_id: str) -> list[Path]:
    """A finished generate job's images, in order."""
    folder = store.artifact_dir(run_dir, job_id)
    paths = []
    while (folder / generated_image_name(len(paths))).is_file():
        paths.append(folder / generated_image_name(len(paths)))
    return paths


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
    from .metrics.base import Sample

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


def mean_values(per_image: Sequence[Sequence[tuple[str, str, float]]]) -> list[tuple[str, str, float]]:
    """One job's metric values from its images' values: the mean per (metric, value name), in first-seen order."""
    sums: dict[tuple[str, str], list[float]] = {}
    for values in per_image:
        for name, value_name, value in values:
            sums.setdefault((name, value_name), []).append(value)
    return [(name, value_name, float(np.mean(values))) for (name, value_name), values in sums.items()]


class MetricScorer:
    """Holds every requested metric (models loaded once) and scores batches of samples."""

    def __init__(self, names: Sequence[str], allow_random: bool, options: Mapping[str, Any]) -> None:
        from .metrics import build_metric
        from .metrics.base import MetricSettings

        settings = MetricSettings(allow_random=allow_random, options=dict(options))
        self.metrics = {name: build_metric(name, settings) for name in names}

    def weights(self) -> dict[str, str]:
        return {name: metric.weights for name, metric in self.metrics.items()}

    def score(self, samples: list) -> list[dict[str, Any]]:
        """Per sample: {"values": [(metric, value name, value)], "seconds": share of the batch time}."""
        start = time.perf_counter()
        values: list[list[tuple[str, str, float]]] = [[] for _ in samples]
        for name, metric in self.metrics.items():
            if getattr(metric, "group_metric", False):
                continue
            for index, scored in enumerate(metric.compute(samples)):
                values[index].extend((name, v.name, float(v.value)) for v in scored)
        share = (time.perf_counter() - start) / max(len(samples), 1)
        return [{"values": v, "seconds": share} for v in values]

    def score_group(self, names: Sequence[str], group: str, specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The group metrics ``names`` over one group's members (file specs, see :func:`group_member_spec`)."""
        start = time.perf_counter()
        samples = group_samples(specs, group)
        values = [(name, v.name, float(v.value)) for name in names for v in self.metrics[name].compute_group(samples)]
        return {"values": values, "seconds": time.perf_counter() - start}


_METRIC_SCORERS: dict[str, Any] = {}  # at most one: configuration key -> the actor, kept for the next run


def metric_scorer(names: Sequence[str], allow_random: bool, options: Mapping[str, Any]) -> Any:
    """The metric actor for this configuration, started once per driver: a second run in the same driver
    (a notebook, a sweep of suites) reuses it instead of loading the metric models again. Another
    configuration replaces it. Named, so that an operator (or a test) can find it:
    ``ray.util.list_named_actors()``."""
    import ray

    key = content_id([ray.get_runtime_context().get_job_id(), list(names), allow_random, options])[:12]
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
    ).remote(list(names), allow_random, options)
    return _METRIC_SCORERS[key]


def forget_metric_scorer() -> None:
    """Drop the cached actor (it could not start: the next run starts a new one)."""
    _METRIC_SCORERS.clear()


# ------------------------------------------------------------------------------------------- driver
def _connect(address: str | None, num_cpus: int | None) -> None:
    import os

    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def _base_row(job: TaskJob, run_id: str, models: Mapping[str, ModelInfo | None]) -> dict[str, Any]:
    model = models.get(job.method)
    settings = dict(job.settings)
    return {
        "run_id": run_id, "job_id": job.job_id, "concept_id": job.concept_id, "task": job.task,
        "pair_id": job.pair_id, "category": job.category, "method": job.method, "preset": job.preset,
        "seed": job.seed, "settings": store.canonical_json(settings), "t_start": job.t_start, "eta": job.eta,
        "object_word": job.object_word, "model_id": model.model_id if model else None,
        "weights_hash": model.weights_hash if model else None,
        "weights_label": model.weights_label if model else NO_MODEL_LABEL,
        "code_version": code_version(), "value": math.nan,
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "ray", "transformers", "open_clip", "pyarrow", "pandas"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            continue
    return versions


def execute(suite: "Suite", pairs: Sequence[Pair], run_dir: str | Path, *, wait: bool = True,
            **options: Any) -> RunSummary:
    """Run the jobs of ``suite`` over ``pairs`` that ``run_dir`` has not finished yet, holding the run folder's
    lock (a concurrent run on it waits, or with ``wait=False`` is refused: :mod:`harness.run_folder`).
    ``options``: address, num_cpus, max_in_flight, retry_failed, allow_random_metrics, quiet."""
    for option in ("max_in_flight", "num_cpus"):  # the CLI says so in one line (harness.guards); the API as well
        if options.get(option) is not None and options[option] < 1:
            raise ValueError(f"{option} must be at least 1, got {options[option]}")
    run_id = uuid.uuid4().hex[:12]
    with run_folder.locked(Path(run_dir).resolve(), run_id, wait=wait):  # "waiting" is said even with --quiet
        return _execute_locked(suite, pairs, run_dir, run_id=run_id, **options)


def _execute_locked(suite: "Suite", pairs: Sequence[Pair], run_dir: str | Path, *, run_id: str,
                    address: str | None = None, num_cpus: int | None = None, max_in_flight: int | None = None,
                    retry_failed: bool = False, allow_random_metrics: bool = False, quiet: bool = False) -> RunSummary:
    import ray
    from tqdm import tqdm

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = store.remove_stale_temps(run_dir)
    if stale and not quiet:
        print(f"{run_dir}: removed {stale} half-written file(s) left by an earlier, killed run", file=sys.stderr)
    for line in run_folder.audit(run_dir):  # unreadable results, missing artifacts: redone, one line each
        print(line, file=sys.stderr)
    started, start_clock = now_iso(), time.perf_counter()
    models, native_resolution = describe_models(suite)
    plan = plan_from_suite(suite, suite.resolution or native_resolution)
    graph: JobGraph = build_job_graph(pairs, plan, models, method_tasks(plan))
    weights = {name: info.weights_hash if info else None for name, info in models.items()}
    for line in run_folder.remove_superseded(run_dir, graph.jobs, weights, code_version()):  # edited manifest rows
        print(line, file=sys.stderr)
    summary = RunSummary(run_dir=run_dir, run_id=run_id, total_jobs=len(graph.jobs))

    statuses = store.job_statuses(run_dir)
    machine_failures = run_folder.infrastructure_failures(run_dir)  # not the jobs' verdict: always run again
    finished = {job_id for job_id, status in statuses.items()
                if (not retry_failed or status != store.STATUS_FAILED) and job_id not in machine_failures}
    ok_jobs = {job_id for job_id, status in statuses.items() if status == store.STATUS_OK}
    todo = [job for job in graph.jobs if job.job_id not in finished]
    summary.skipped = len(graph.jobs) - len(todo)
    for job in [j for j in todo if j.status == store.STATUS_NOT_APPLICABLE]:
        store.write_job_results(run_dir, job.job_id, [{**_base_row(job, run_id, models), "status": job.status,
                                                       "error": job.reason, "finished_at": now_iso()}])
        summary.not_applicable += 1
    todo = [job for job in todo if job.status != store.STATUS_NOT_APPLICABLE]

    # Group metrics score sets of jobs (harness.jobs.GROUP_KINDS) once every member has an ok result, in this
    # run or an earlier one: the metric actor reads the members' images back from their artifacts. A group's
    # values are a result file of their own (id "group-<kind>-..."), so members are written when scored.
    group_metrics: dict[str, list[str]] = defaultdict(list)  # kind -> metric names
    for metric in plan.metrics:
        if metric.group_by:
            group_metrics[metric.group_by].append(metric.name)
    members: dict[tuple[str, str], list[TaskJob]] = defaultdict(list)  # (kind, group) -> member jobs
    for job in graph.jobs:
        for kind, group in job.groups.items():
            if kind in group_metrics:
                members[(kind, group)].append(job)

    group_ids: dict[tuple[str, str], str] = {}

    def group_prefix(key: tuple[str, str]) -> str:
        """The start of every result id this group has had, whatever its membership."""
        kind, group = key
        return f"{GROUP_RESULT_PREFIX}{kind}-{group[:12]}-"

    def group_result_id(key: tuple[str, str]) -> str:
        if key not in group_ids:
            metrics = sorted([m.name, m.version] for m in plan.metrics if m.group_by == key[0])
            membership = content_id({"members": sorted(job.job_id for job in members[key]), "metrics": metrics})
            group_ids[key] = group_prefix(key) + membership[:12]
        return group_ids[key]

    def group_to_score(key: tuple[str, str]) -> bool:
        return all(job.job_id in ok_jobs for job in members[key]) and group_result_id(key) not in finished

    if not todo and not any(map(group_to_score, members)):  # nothing to run: no cluster, no metric models
        summary.wall_seconds = time.perf_counter() - start_clock
        _write_run_manifest(run_dir, suite, summary, started, models, {}, slots=0)
        return summary

    _connect(address, num_cpus)
    resources = suite.resources
    # SPREAD: jobs are long and independent, so they go to the least-loaded nodes instead of filling the
    # driver's node first (Ray's default prefers locality, which starves other nodes of short jobs).
    task_options = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
                    "max_retries": resources.max_retries, "retry_exceptions": False, "scheduling_strategy": "SPREAD"}
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    slots = max(1, int(cluster_cpus // max(task_options["num_cpus"], 1e-9)))
    max_in_flight = max_in_flight or 2 * cluster_cpus
    learn_remote = ray.remote(learn_concept_task).options(**task_options)
    task_remote = ray.remote(run_task_job).options(**task_options)
    main_model = next((info.model_id for info in models.values() if info), None)
    warm_remote = ray.remote(warm_worker).options(**task_options)
    for _ in range(slots):  # fire and forget: it overlaps the metric actor's start; real jobs queue behind it
        warm_remote.remote(main_model)
    metric_names = [m.name for m in plan.metrics]
    metric_info = {m.name: m for m in plan.metrics}
    # The metric actor holds the models once for the whole run (and the driver's next runs).
    scorer = metric_scorer(metric_names, allow_random_metrics, {k: dict(v) for k, v in suite.metric_options.items()})
    # Jobs start while the actor loads its models; its answer is awaited with them, and an actor that cannot
    # start (e.g. random CLIP weights refused) still stops the run at once.
    weights_pending = [scorer.weights.remote()] if metric_names else []
    metric_weights: dict[str, str] = {}

    def weights_of(name: str) -> str | None:
        if weights_pending:
            try:
                metric_weights.update(ray.get(weights_pending.pop()))
            except Exception:
                forget_metric_scorer()
                raise
        return metric_weights.get(name)

    # Learn first: every concept's learning (the long work) is queued before any task job, so the end of
    # the run is short task jobs filling the slots instead of one last learn running alone (a list
    # schedule's tail is as long as its last job). Task jobs are submitted once their concept is learned.
    concepts_root = str(run_dir / store.CONCEPTS_DIR)
    waiting: dict[str, list[TaskJob]] = defaultdict(list)  # concept id -> its jobs, in graph order
    for job in todo:
        waiting[job.concept_id].append(job)
    to_learn = deque(waiting)  # concepts in order of first appearance
    concepts_total = len(to_learn)
    learning: dict[Any, str] = {}  # learn refs not finished -> concept id
    learned: dict[str, dict] = {}  # concept id -> the learn task's output
    ready: deque[TaskJob] = deque()  # jobs whose concept is learned, not yet submitted
    in_flight: dict[Any, TaskJob] = {}  # task refs
    scoring: dict[Any, list[tuple[TaskJob, dict]]] = {}  # metric refs -> the outputs they score
    group_scoring: dict[Any, tuple[str, str]] = {}  # group-metric refs -> (kind, group)
    groups_submitted: set[tuple[str, str]] = set()
    progress = tqdm(total=len(todo), disable=quiet, unit="job", desc="jobs")

    def show() -> None:
        progress.set_postfix(learned=f"{len(learned)}/{concepts_total}", done=summary.done, failed=summary.failed,
                             skipped=summary.skipped, refresh=False)

    learn_counted: set[str] = set()  # a concept's learning time is counted once, not once per job using it

    def record(job: TaskJob, rows: list[dict[str, Any]], failed: bool) -> None:
        try:
            store.write_job_results(run_dir, job.job_id, rows)
        except OSError as error:  # e.g. the disk is full: the job stays unrecorded and runs again next time
            print(f"{run_dir}: could not record job {job.job_id} ({one_line(error)}); it runs again next time",
                  file=sys.stderr)
            already_counted = str(rows[0].get("error") or "").startswith(run_folder.INFRASTRUCTURE_PREFIX)
            summary.infrastructure_failed += not already_counted
            failed = True
        summary.failed += failed
        summary.done += not failed
        if not failed:
            ok_jobs.add(job.job_id)
            for key in job.groups.items():
                score_group_if_complete(key)
        row = rows[0]
        summary.work_seconds += float(row.get("task_seconds") or 0.0) + float(row.get("metric_seconds") or 0.0)
        if job.concept_id not in learn_counted:
            learn_counted.add(job.concept_id)
            summary.work_seconds += float(row.get("learn_seconds") or 0.0)
        progress.update(1)
        show()

    def ok_rows(job: TaskJob, output: dict, values: list[tuple[str, str, float]], metric_seconds: float) -> list[dict]:
        base = {**_base_row(job, run_id, models), **output["artifacts"], "status": store.STATUS_OK,
                "learn_seconds": output["learn_seconds"], "task_seconds": output["task_seconds"],
                "metric_seconds": metric_seconds, "finished_at": now_iso()}
        return metric_rows(base, values)

    def metric_rows(base: dict, values: list[tuple[str, str, float]]) -> list[dict]:
        """One row per value on top of ``base`` (just ``base`` when there are none)."""
        return [{**base, "metric": value_name, "value": value, "metric_version": metric_info[name].version,
                 "metric_scale": metric_info[name].scale, "metric_weights": weights_of(name)}
                for name, value_name, value in values] or [base]

    def failed_row(job: TaskJob, error: BaseException, stage: str = "") -> list[dict]:
        if run_folder.is_infrastructure_error(error):  # the machine's failure, not the job's verdict
            summary.infrastructure_failed += 1
            stage = run_folder.INFRASTRUCTURE_PREFIX + stage
        return [{**_base_row(job, run_id, models), "status": store.STATUS_FAILED, "error": stage + one_line(error),
                 "finished_at": now_iso()}]

    def score_group_if_complete(key: tuple[str, str]) -> None:
        if key not in members or key in groups_submitted or not group_to_score(key):
            return
        groups_submitted.add(key)
        specs = [group_member_spec(job, run_dir) for job in sorted(members[key], key=lambda job: job.job_id)]
        group_scoring[scorer.score_group.remote(group_metrics[key[0]], key[1], specs)] = key

    def record_group(key: tuple[str, str], result: dict | None, error: BaseException | None = None) -> None:
        """Write a group's values (or its failure) under the group's result id, replacing older memberships'."""
        first = min(members[key], key=lambda job: job.job_id)
        result_id = group_result_id(key)
        # A seeds group is one source's (its pair id is the first pair with that source, so it pairs with other
        # methods' groups on that source); a concepts group spans pairs. Neither has one seed.
        base = {**_base_row(first, run_id, models), "job_id": result_id, "concept_id": None, "seed": None,
                "pair_id": first.pair_id if key[0] == SEEDS else None, "finished_at": now_iso()}
        if key[0] == CONCEPTS:  # its members may differ in object word: the row says only what they share
            objects = {job.object_word for job in members[key]}
            base.update(settings=store.canonical_json(without_object(first.settings)),
                        object_word=objects.pop() if len(objects) == 1 else None)
        if error is not None:
            rows = [{**base, "status": store.STATUS_FAILED, "error": "group metric: " + one_line(error)}]
        else:
            base = {**base, "status": store.STATUS_OK, "metric_seconds": result["seconds"]}
            summary.work_seconds += result["seconds"]
            rows = metric_rows(base, result["values"])
        store.write_job_results(run_dir, result_id, rows)
        store.remove_superseded_results(run_dir, group_prefix(key), keep=result_id)
        summary.groups_failed += error is not None
        summary.groups_scored += error is None

    def awaiting_scores() -> int:
        return sum(len(batch) for batch in scoring.values())

    def submit() -> None:
        # At most max_in_flight Ray tasks are queued or running, and at most max_in_flight outputs may wait
        # for the metric actor as well: a slow scorer then holds back new jobs instead of letting finished
        # samples (images) pile up in the driver's memory. (Members held for a group metric do not count:
        # a group larger than the bound would never finish.)
        while len(learning) + len(in_flight) < max_in_flight:
            if to_learn:
                concept_id = to_learn.popleft()
                learning[learn_remote.remote(graph.learns[concept_id], concepts_root)] = concept_id
            elif ready and len(in_flight) + awaiting_scores() < max_in_flight:
                job = ready.popleft()
                node = graph.learns[job.concept_id]
                ref = task_remote.remote(job, learned[job.concept_id], node.model.model_id if node.model else None,
                                         plan.resolution, str(run_dir))
                in_flight[ref] = job
            else:
                break
        summary.peak_in_flight = max(summary.peak_in_flight, len(in_flight))

    def concept_learned(ref: Any) -> None:
        concept_id = learning.pop(ref)
        try:
            learned[concept_id] = ray.get(ref)
        except Exception as error:  # every job of a concept that could not be learned fails with its error
            for job in waiting.pop(concept_id):
                record(job, failed_row(job, error), failed=True)
            return
        if learned[concept_id].get("relearned"):
            print(f"{learned[concept_id]['relearned']}: the concept was broken and has been learned again",
                  file=sys.stderr)
        if learned[concept_id].get("learned"):
            summary.learn_node_ids[learned[concept_id]["node_id"]] += 1
        ready.extend(waiting.pop(concept_id))
        show()

    for key in members:  # groups whose members all finished in earlier runs
        score_group_if_complete(key)
    submit()
    while learning or in_flight or scoring or group_scoring:
        # Metrics are scored asynchronously: new jobs start while the metric actor works.
        refs = [*learning, *in_flight, *scoring, *group_scoring, *weights_pending]
        ready_refs, _ = ray.wait(refs, num_returns=1)
        ready_refs += ray.wait([r for r in refs if r not in ready_refs], num_returns=len(refs) - len(ready_refs),
                               timeout=0)[0]
        outputs: list[tuple[TaskJob, dict]] = []
        for ref in ready_refs:
            if ref in weights_pending:
                weights_of("")
            elif ref in learning:
                concept_learned(ref)
            elif ref in in_flight:
                job = in_flight.pop(ref)
                try:
                    output = ray.get(ref)
                except Exception as error:  # a failing job is recorded and the run goes on
                    record(job, failed_row(job, error), failed=True)
                    continue
                summary.node_ids[output["node_id"]] += 1
                outputs.append((job, output))
            elif ref in scoring:
                batch = scoring.pop(ref)
                try:
                    results = ray.get(ref)
                except Exception as error:  # a metric refused a sample: find which one, fail only that job
                    if len(batch) > 1:
                        for item in batch:
                            scoring[scorer.score.remote(item[1]["samples"])] = [item]
                    else:
                        record(batch[0][0], failed_row(batch[0][0], error, "metric: "), failed=True)
                    continue
                for job, output in batch:  # a generation's images each have values: the job keeps their mean
                    mine, results = results[:len(output["samples"])], results[len(output["samples"]):]
                    values = mean_values([result["values"] for result in mine])
                    record(job, ok_rows(job, output, values, sum(result["seconds"] for result in mine)), failed=False)
            else:
                key = group_scoring.pop(ref)
                try:
                    group_result = ray.get(ref)
                except Exception as error:  # only the group's values are lost; its members keep their rows
                    record_group(key, None, error)
                    continue
                record_group(key, group_result)
        if outputs:
            if metric_names:
                scoring[scorer.score.remote([s for _, o in outputs for s in o["samples"]])] = outputs
            else:
                for job, output in outputs:
                    record(job, ok_rows(job, output, [], 0.0), failed=False)
        submit()
    progress.close()

    summary.learns_run = sum(bool(output.get("learned")) for output in learned.values())
    if weights_pending:  # every job failed before any was scored: the manifest still records the weights
        try:
            weights_of("")
        except Exception:
            pass
    summary.wall_seconds = time.perf_counter() - start_clock
    method_time = summary.work_seconds / slots
    summary.overhead_share = max(0.0, (summary.wall_seconds - method_time) / summary.wall_seconds) \
        if summary.wall_seconds > 0 and summary.jobs_run else 0.0
    try:
        _write_run_manifest(run_dir, suite, summary, started, models, metric_weights, slots)
    except OSError as error:  # e.g. the disk is full: the results written so far stand
        print(f"{run_dir / store.RUN_MANIFEST}: not updated ({one_line(error)})", file=sys.stderr)
    return summary


def _write_run_manifest(run_dir: Path, suite: "Suite", summary: RunSummary, started: str,
                        models: Mapping[str, ModelInfo | None], metric_weights: Mapping[str, str], slots: int) -> None:
    try:
        previous = store.read_run_manifest(run_dir)
    except ValueError:  # a corrupt run.json: rewritten below
        previous = {}
    counts = {"jobs": summary.total_jobs, "done": summary.done, "skipped": summary.skipped,
              "failed": summary.failed, "not_applicable": summary.not_applicable,
              "learns_run": summary.learns_run, "groups_scored": summary.groups_scored,
              "groups_failed": summary.groups_failed, "infrastructure_failed": summary.infrastructure_failed}
    # Every run on this folder, oldest first: the top-level keys describe the last one.
    runs = [*previous.get("runs", []), {"run_id": summary.run_id, "started_at": started, "finished_at": now_iso(),
                                        "host": socket.gethostname(), "code_version": code_version(),
                                        "counts": counts}]
    store.write_run_manifest(run_dir, {
        "runs": runs,
        "run_id": summary.run_id, "suite": suite.to_dict(), "suite_path": suite.source,
        "code_version": code_version(), "git": git_describe(), "versions": _versions(),
        "host": socket.gethostname(), "started_at": started, "finished_at": now_iso(),
        "models": {m: (info.__dict__ if info else None) for m, info in models.items()},
        "metric_weights": dict(metric_weights) or previous.get("metric_weights", {}),
        "counts": counts,
        "learns_total": int((previous.get("learns_total") or 0) + summary.learns_run),
        "nodes": dict(summary.node_ids),
        "learn_nodes": dict(summary.learn_node_ids),
        "timing": {"wall_seconds": summary.wall_seconds, "work_seconds": summary.work_seconds,
                   "worker_slots": slots, "overhead_share": summary.overhead_share,
                   "peak_in_flight": summary.peak_in_flight},
    })


# -------------------------------------------------------------------------------------- entry points
def load_pairs(suite: "Suite", allow_outside: bool = False) -> list[Pair]:
    """The good rows of the suite's manifests (bad rows printed, one line each), filtered by category and
    cut at ``limit_pairs`` per manifest. A manifest that is unusable as a whole is a usage error."""
    from .cli import UsageError
    from .manifest import load_manifest

    pairs: list[Pair] = []
    for manifest in suite.manifests:
        report = load_manifest(manifest, allow_outside=allow_outside)
        for problem in [*report.manifest_problems, *report.problems]:
            print(f"skipped: {problem}", file=sys.stderr)
        if not report.usable:
            raise UsageError(f"{manifest}: the manifest cannot be used (see the lines above)")
        specs = [spec for spec in report.rows if suite.categories is None or spec.category in suite.categories]
        pairs.extend(specs[: suite.limit_pairs] if suite.limit_pairs else specs)
    return pairs


def run_suite(suite_path: str | Path, out: str | Path | None = None, address: str | None = None, *,
              num_cpus: int | None = None, max_in_flight: int | None = None, retry_failed: bool = False,
              allow_random_metrics: bool = False, allow_outside: bool = False, quiet: bool = False,
              wait: bool = True) -> RunSummary:
    from .suite import load_suite

    suite = load_suite(suite_path)
    run_dir = Path(out) if out else Path("runs") / suite.name
    pairs = load_pairs(suite, allow_outside)
    return execute(suite, pairs, run_dir, address=address, num_cpus=num_cpus, max_in_flight=max_in_flight,
                   retry_failed=retry_failed, allow_random_metrics=allow_random_metrics, quiet=quiet, wait=wait)


def run_main(args: argparse.Namespace) -> int:
    summary = run_suite(args.suite, args.out, args.address, num_cpus=args.num_cpus,
                        max_in_flight=args.max_in_flight, retry_failed=args.retry_failed,
                        allow_random_metrics=args.allow_random_metrics, allow_outside=args.allow_outside,
                        quiet=args.quiet, wait=not getattr(args, "no_wait", False))
    print(f"{summary.total_jobs} jobs: {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
          f"(already finished), {summary.not_applicable} not applicable; {summary.learns_run} concepts learned; "
          f"{summary.wall_seconds:.1f} s wall, harness overhead {summary.overhead_share:.0%}")
    if summary.infrastructure_failed:
        print(f"{summary.infrastructure_failed} job(s) failed for the machine's sake (disk full, lost worker): they run "
              f"again on the next run, without --retry-failed")
    if summary.groups_scored or summary.groups_failed:
        print(f"group metrics: {summary.groups_scored} groups scored, {summary.groups_failed} failed")
    print(f"results: {summary.run_dir / store.RESULTS_DIR} (read with harness.store.read_results)")
    if not args.no_report:
        try:
            report = importlib.import_module("harness.report")
            write_report = getattr(report, "write_report")
        except (ImportError, AttributeError):
            print("report: harness.report.write_report is not available; skipped (run `clic-bench report` later)")
        else:
            print(f"report: {write_report(summary.run_dir)}")
    return 1 if summary.failed else 0
