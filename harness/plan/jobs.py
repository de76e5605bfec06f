"""Expand a suite into a job graph: learn nodes (one per concept) and the task jobs that use them.

Ids are content hashes. A concept id hashes the source image and mask *bytes* (not their paths), the
method, preset, seed, learning overrides, the model's weights hash and the code version; a job id hashes
its concept id, the target bytes, the task settings and the metric names/versions. Renaming a folder
therefore reruns nothing, and changing any setting reruns exactly the jobs it touches.
"""
from __future__ import annotations

import hashlib
import itertools
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..store import STATUS_NOT_APPLICABLE, canonical_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Code whose change changes what a job computes. The orchestration (runner, store, report) does not, and
# hashing it would rerun every job after any report tweak; metric code is here because versions get forgotten.
OUTPUT_DETERMINING_SOURCES = ("clic", "harness/metrics")
PENDING = "pending"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_id(data: Any) -> str:
    return sha256_hex(canonical_json(data).encode())


@lru_cache(maxsize=None)
def file_digest(path: str) -> str:
    """sha256 of a file's bytes (cached: a source image is shared by many jobs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def optional_digest(path: str | None) -> str | None:
    return file_digest(str(path)) if path else None


@lru_cache(maxsize=1)
def code_version() -> str:
    """``clic-harness <version>+<sha256 of the output-determining sources>``, computed once per process.

    A source hash rather than the git commit: a commit that touches only docs or the report must not
    rerun every job, and an uncommitted edit to a loss must.
    """
    try:
        base = package_version("clic-harness")
    except PackageNotFoundError:
        base = "0+unknown"
    digest = hashlib.sha256()
    for folder in OUTPUT_DETERMINING_SOURCES:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
            digest.update(path.read_bytes())
    return f"{base}+{digest.hexdigest()[:12]}"


@lru_cache(maxsize=1)
def git_describe() -> str | None:
    """The repository's ``git describe`` (recorded in run.json for people; ids use :func:`code_version`)."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    weights_hash: str
    weights_label: str
    dtype: str = "fp32"  # the frozen model's precision: part of the concept id (fp32 adds nothing, as before)
    device: str = "auto"  # where workers run it: not part of any id (a run resumes on other hardware)


# Group metrics score a set of jobs' outputs together; each names the set it needs (``group_by``):
SEEDS = "seeds"  # one source x method x preset x settings, over seeds (e.g. diversity across seeds)
CONCEPTS = "concepts"  # one method x preset x settings but the object, over every source (all categories), seeds, objects
GROUP_KINDS = (SEEDS, CONCEPTS)


def without_object(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Generation settings without the object word: what the jobs of a "concepts" group share."""
    return {key: value for key, value in settings.items() if key != "object"}


@dataclass(frozen=True)
class MetricInfo:
    name: str
    version: str
    scale: str
    tasks: frozenset[str]
    group_by: str | None = None  # None: scored per job; else one of GROUP_KINDS
    values: Mapping[str, bool] = field(default_factory=dict)  # value name -> higher is better
    target: str = ""  # the metric class as "module:Class", resolved at plan time for the metric actor


@dataclass(frozen=True)
class LearnNode:
    """Learn one concept: everything that determines it, and where the source is."""

    concept_id: str
    method: str
    preset: str
    seed: int
    method_target: str  # the method class as "module:Class", resolved at plan time for the workers
    source_image: str
    source_mask: str | None
    object_word: str
    learn_overrides: Mapping[str, Any]
    model: ModelInfo | None  # None for methods that load no model
    resolution: int
    # Without a source mask: the settings of CLiC's automatic source mask (RoI-matching settings).
    mask_settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskJob:
    """One transfer / generate / match job on a learned concept."""

    job_id: str
    task: str
    concept_id: str
    pair_id: str
    category: str
    method: str
    preset: str
    seed: int
    method_target: str  # the method class as "module:Class", resolved at plan time for the workers
    label: str  # "clic/paper no_att": method, preset and variant, decided at plan time
    variant: str  # "" or what sets this suite entry apart from others of its method and preset
    settings: Mapping[str, Any]  # the task's settings (t_start, eta, steps, object ...) plus learn overrides
    object_word: str
    metrics: tuple[str, ...]  # metrics that score this task
    target_image: str | None = None
    target_mask: str | None = None
    target_mask_gt: str | None = None
    expected_image: str | None = None
    source_image: str | None = None
    source_mask: str | None = None
    # kind (GROUP_KINDS) -> group id: group metrics of that kind score the group's outputs together
    groups: Mapping[str, str] = field(default_factory=dict)
    status: str = PENDING
    reason: str | None = None  # why a job is not applicable

    @property
    def t_start(self) -> int | None:
        return self.settings.get("t_start")

    @property
    def eta(self) -> float | None:
        return self.settings.get("eta")


@dataclass
class JobGraph:
    learns: dict[str, LearnNode] = field(default_factory=dict)
    jobs: list[TaskJob] = field(default_factory=list)

    def jobs_of(self, concept_id: str) -> list[TaskJob]:
        return [job for job in self.jobs if job.concept_id == concept_id]


@dataclass(frozen=True)
class Pair:
    """The manifest columns the job graph reads (absolute local paths or URIs); a manifest row is a
    :class:`harness.plan.manifest.PairSpec`, which adds the columns only people read."""

    pair_id: str
    category: str
    source_image: str
    source_mask: str | None
    source_object: str
    target_image: str
    target_mask: str | None
    target_object: str
    target_mask_gt: str | None = None
    expected_image: str | None = None


@dataclass(frozen=True)
class MethodRun:
    """One method × preset of a suite, with its learning overrides."""

    name: str
    preset: str
    learn: Mapping[str, Any] = field(default_factory=dict)
    target: str = ""  # the method class as "module:Class" (default: the registry's entry for ``name``)
    # term -> sha256 of the module source of a custom loss term given as ``fn: "pkg.mod:func"``: editing the
    # function changes the concept id, so the next run learns again instead of reusing stale concepts
    term_sources: Mapping[str, str] = field(default_factory=dict)
    variant: str = ""  # what sets this run apart from others of its method and preset ("no_att"), if any
    label: str = ""  # its name in every table: "clic/paper", "clic/paper no_att" (harness.plan.identity)


@dataclass(frozen=True)
class Plan:
    """What the job graph needs from a suite, in plain values."""

    methods: Sequence[MethodRun]
    seeds: Sequence[int]
    tasks: frozenset[str]  # which of transfer / generate / match run
    t_starts: Sequence[int | None]  # [None]: each preset's own value
    etas: Sequence[float | None]
    transfer_settings: Mapping[str, Any]  # other transfer settings (steps ...)
    generate_objects: Sequence[str]  # empty: each pair's target object
    generate_prompts: Sequence[str]  # empty: each preset's prompt template
    generate_settings: Mapping[str, Any]
    match_missing_masks: bool  # transfer into pairs without a target mask via RoI matching
    match_settings: Mapping[str, Any]
    metrics: Sequence[MetricInfo]
    resolution: int
    estimate_source_masks: bool = False  # learn without the manifest's source masks (kept as ground truth)


def _metrics_for(task: str, metrics: Sequence[MetricInfo]) -> list[MetricInfo]:
    return [m for m in metrics if task in m.tasks]


def _job_id(concept_id: str, task: str, target_hashes: Mapping[str, str | None], settings: Mapping[str, Any],
            metrics: Sequence[MetricInfo]) -> str:
    return content_id({
        "concept": concept_id, "task": task, "targets": dict(target_hashes), "settings": dict(settings),
        "metrics": sorted([m.name, m.version] for m in metrics),
    })


def build_job_graph(pairs: Iterable[Pair], plan: Plan, models: Mapping[str, ModelInfo | None],
                    supports: Mapping[str, frozenset[str]]) -> JobGraph:
    """The learn nodes and task jobs of ``plan`` over ``pairs``.

    ``models`` maps a method name to the model it runs on (None: no model); ``supports`` maps a method
    name to its tasks. Tasks a method does not support become ``not_applicable`` jobs with the reason.
    """
    builder = _GraphBuilder(plan, models, supports)
    for pair, run, seed in itertools.product(list(pairs), plan.methods, plan.seeds):
        builder.add(pair, run, int(seed))
    return builder.graph


class _GraphBuilder:
    """Adds one (pair, method run, seed) at a time: its learn node and its transfer, generate, match jobs."""

    def __init__(self, plan: Plan, models: Mapping[str, ModelInfo | None], supports: Mapping[str, frozenset[str]]):
        self.plan, self.models, self.supports = plan, models, supports
        self.graph = JobGraph()
        self.seen: set[str] = set()

    def add(self, pair: Pair, run: MethodRun, seed: int) -> None:
        from clic.methods import method_target

        plan, model = self.plan, self.models[run.name]
        learn_mask = None if plan.estimate_source_masks else pair.source_mask
        learn_key = {
            "source_image": file_digest(pair.source_image), "source_mask": optional_digest(learn_mask),
            "object_word": pair.source_object, "method": run.name, "preset": run.preset, "seed": seed,
            "learn": dict(run.learn), "resolution": plan.resolution,
            "weights_hash": model.weights_hash if model else None, "code_version": code_version(),
            "mask_settings": None if learn_mask else dict(plan.match_settings),
            **({"dtype": model.dtype} if model and model.dtype != "fp32" else {}),
            **({"term_sources": dict(run.term_sources)} if run.term_sources else {}),
        }
        concept_id = content_id(learn_key)
        target = run.target or method_target(run.name)
        self.graph.learns.setdefault(concept_id, LearnNode(
            concept_id=concept_id, method=run.name, preset=run.preset, seed=seed, method_target=target,
            source_image=pair.source_image, source_mask=learn_mask, object_word=pair.source_object,
            learn_overrides=dict(run.learn), model=model, resolution=plan.resolution,
            mask_settings={} if learn_mask else dict(plan.match_settings),
        ))
        self.run = run
        self.common = dict(concept_id=concept_id, pair_id=pair.pair_id, category=pair.category, method=run.name,
                           preset=run.preset, seed=seed, method_target=target, source_image=pair.source_image,
                           source_mask=pair.source_mask, label=run.label or f"{run.name}/{run.preset}",
                           variant=run.variant)
        # The pair id is part of a task job's identity: two rows with identical files still get one result
        # row each (their concept, which depends on the bytes only, is shared). So is every other manifest
        # field that reaches the job or its rows: the target object (it is in the transfer and matching
        # prompts) and the category (a column of every row): editing either reruns the job.
        target_hashes = {"pair_id": pair.pair_id, "target_object": pair.target_object, "category": pair.category,
                         "target_image": file_digest(pair.target_image),
                         "target_mask": optional_digest(pair.target_mask),
                         "target_mask_gt": optional_digest(pair.target_mask_gt),
                         "expected_image": optional_digest(pair.expected_image)}
        target_paths = dict(target_image=pair.target_image, target_mask=pair.target_mask,
                            target_mask_gt=pair.target_mask_gt, expected_image=pair.expected_image)
        if "transfer" in plan.tasks:
            self.transfers(pair, target_hashes, target_paths)
        if "generate" in plan.tasks:
            self.generations(pair, learn_key)
        if "match" in plan.tasks:
            self.job("match", dict(plan.match_settings), pair.target_object, target_hashes, **target_paths)

    def job(self, task: str, settings: dict[str, Any], object_word: str, targets: Mapping[str, str | None],
            reason: str | None = None, groups: Mapping[str, str] | None = None, **paths: Any) -> None:
        run, tasks = self.run, self.supports[self.run.name]
        metrics = _metrics_for(task, self.plan.metrics)
        settings = {**settings, "learn": dict(run.learn)} if run.learn else settings
        if task not in tasks:
            reason = f"method {run.name!r} does not support {task!r}"
        elif task == "transfer" and "match" in settings and "match" not in tasks:
            reason = f"no target mask, and method {run.name!r} cannot predict one (no RoI matching)"
        job_id = _job_id(self.common["concept_id"], task, targets, settings, metrics)
        if job_id in self.seen:
            return  # a generation depends on the concept only: pairs sharing a source share it
        self.seen.add(job_id)
        self.graph.jobs.append(TaskJob(
            job_id=job_id, task=task, settings=settings,
            object_word=object_word, metrics=tuple(m.name for m in metrics),
            status=PENDING if reason is None else STATUS_NOT_APPLICABLE, reason=reason,
            groups=dict(groups or {}) if reason is None else {}, **self.common, **paths,
        ))

    def transfers(self, pair: Pair, target_hashes: Mapping[str, str | None], target_paths: Mapping[str, Any]) -> None:
        plan = self.plan
        for t_start, eta in itertools.product(plan.t_starts, plan.etas):
            settings = dict(plan.transfer_settings)
            if t_start is not None:
                settings["t_start"] = int(t_start)
            if eta is not None:
                settings["eta"] = float(eta)
            if not pair.target_mask:
                if not plan.match_missing_masks:
                    self.job("transfer", settings, pair.target_object, target_hashes,
                             reason="no target mask, and match.enabled is false", **target_paths)
                    continue
                settings["match"] = dict(plan.match_settings)  # the mask is predicted first
            self.job("transfer", settings, pair.target_object, target_hashes, **target_paths)

    def generations(self, pair: Pair, learn_key: Mapping[str, Any]) -> None:
        plan, run = self.plan, self.run
        for object_word, prompt in itertools.product(plan.generate_objects or [pair.target_object],
                                                     plan.generate_prompts or [None]):
            settings = {**plan.generate_settings, "object": object_word}
            if prompt is not None:
                settings["prompt"] = prompt
            shared = {"method": run.name, "preset": run.preset, "learn": dict(run.learn)}
            # A concept's diversity is over one object; classifying concepts pools every object (by default
            # each pair's own target object, so per-object groups would split the concepts) and every
            # category: the class set is every concept of the run (ConceptExpress classifies among all).
            groups = {SEEDS: content_id({**shared, "kind": SEEDS, "settings": settings,
                                         "source": learn_key["source_image"],
                                         "source_mask": learn_key["source_mask"]}),
                      CONCEPTS: content_id({**shared, "kind": CONCEPTS, "settings": without_object(settings)})}
            # the category is a column of every row: editing it reruns the generation too
            self.job("generate", settings, object_word, {"category": pair.category}, groups=groups)


# ------------------------------------------------------------------------------------------ groups
GROUP_RESULT_PREFIX = "group-"  # + kind, group id, membership hash: the result id of a group's values
GroupKey = tuple[str, str]  # (kind, group id)


def group_members(graph: JobGraph, metrics: Sequence[MetricInfo]) -> dict[GroupKey, list[TaskJob]]:
    """(kind, group) -> member jobs, for every group that some group metric of the plan scores."""
    kinds = {metric.group_by for metric in metrics if metric.group_by}
    members: dict[GroupKey, list[TaskJob]] = {}
    for job in graph.jobs:
        for kind, group in job.groups.items():
            if kind in kinds:
                members.setdefault((kind, group), []).append(job)
    return members


def group_prefix(key: GroupKey) -> str:
    """The start of every result id this group has had, whatever its membership."""
    kind, group = key
    return f"{GROUP_RESULT_PREFIX}{kind}-{group[:12]}-"


def group_result_id(key: GroupKey, members: Sequence[TaskJob], metrics: Sequence[MetricInfo]) -> str:
    """The result id of a group's values: its prefix and a hash of its membership and metric versions, so a
    group that gains members (e.g. more seeds) is scored again."""
    versions = sorted([m.name, m.version] for m in metrics if m.group_by == key[0])
    membership = content_id({"members": sorted(job.job_id for job in members), "metrics": versions})
    return group_prefix(key) + membership[:12]
