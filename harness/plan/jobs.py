"""Expand a suite into a job graph: learn nodes (one per concept) and the task jobs that use them.

Ids are content hashes. A concept id hashes the source image and mask *bytes* (not their paths), the
method, preset, seed, learning overrides, the model's weights hash and the code version; a job id hashes
its concept id, the target bytes, the task settings and the metric names/versions. Renaming a folder
therefore reruns nothing, and changing any setting reruns exactly the jobs it touches.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clic.hashing import json_sha256, sha256_hex

from ..groups import CONCEPTS, GROUP_KINDS, SEEDS, GroupKey  # noqa: F401 - re-exported: group metrics' set kinds
from ..store import STATUS_NOT_APPLICABLE, canonical_json
from .digests import (  # noqa: F401
    OUTPUT_DETERMINING_SOURCES,
    PROJECT_ROOT,
    code_version,
    file_digest,
    git_describe,
    optional_digest,
    prefetch_digests,
    spliced_json,
)
from .identity import method_label

PENDING = "pending"


content_id = json_sha256  # the id of a JSON-able value (clic.hashing: one copy of the rule)


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    weights_hash: str
    weights_label: str
    dtype: str = "fp32"  # the frozen model's precision: part of the concept id (fp32 adds nothing, as before)
    device: str = "auto"  # where workers run it: not part of any id (a run resumes on other hardware)


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
    learn: Any  # the method's resolved learning config (a clic.settings.MethodConfig), handed to it unchanged
    model: ModelInfo | None  # None for methods that load no model
    resolution: int
    # Without a source mask: the resolved RoI-matching settings of CLiC's automatic source mask, else None.
    mask_settings: Any = None


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
    variant: str  # "" or what sets this configuration apart from others of its method and preset
    settings: Any  # the task's resolved settings (clic.settings.Settings), None where the method reads none
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
    learn: Any = None  # the concept's resolved learning config (recorded in every row)
    match: Any = None  # a transfer without a target mask: the resolved matching settings that predict it
    sweep: Mapping[str, Any] | None = None  # the suite's own values for this job (t_start, eta, prompt ...)

    @property
    def t_start(self) -> int | None:
        return getattr(self.settings, "t_start", None)

    @property
    def eta(self) -> float | None:
        return getattr(self.settings, "eta", None)

    def task_record(self) -> dict[str, Any]:
        """The resolved settings the task runs with (what its id hashes)."""
        record: dict[str, Any] = {self.task: self.settings.to_dict() if self.settings is not None else None}
        if self.match is not None:
            record["match"] = self.match.to_dict()
        return record

    def settings_record(self) -> dict[str, Any]:
        """Every resolved value the job ran with: its task's settings, the matching that predicted its mask and
        the learning config of its concept (the rows' ``settings`` column)."""
        return {**self.task_record(), "learn": self.learn.to_dict() if self.learn is not None else None}


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
class SweepPoint:
    """One point of a suite's task settings for one method run: what the suite asked for (``requested``, e.g.
    ``{"t_start": 4}``), the settings it resolves to with the preset, and the variant name that tells it apart
    from the run's other points ("t_start=4"; "" when the run has one point)."""

    requested: Mapping[str, Any]
    settings: Any  # clic.settings.Settings, or None where the method reads no settings for the task
    variant: str = ""


@dataclass(frozen=True)
class ResolvedRun:
    """A method run's settings, resolved once (``clic.methods.base.Method.resolve``) when the suite is read."""

    learn: Any  # clic.settings.MethodConfig
    transfer: tuple[SweepPoint, ...] = ()
    generate: tuple[SweepPoint, ...] = ()
    match: Any = None  # clic.match.MatchSettings or None

    def record(self) -> dict[str, Any]:
        """JSON-ready, for run.json."""

        def points(items: Sequence[SweepPoint]) -> list[dict[str, Any]]:
            return [
                {
                    "requested": dict(p.requested),
                    "variant": p.variant,
                    "settings": p.settings.to_dict() if p.settings is not None else None,
                }
                for p in items
            ]

        return {
            "learn": self.learn.to_dict(),
            "transfer": points(self.transfer),
            "generate": points(self.generate),
            "match": self.match.to_dict() if self.match is not None else None,
        }


@dataclass(frozen=True)
class MethodRun:
    """One method × preset of a suite, with its learning overrides and its resolved settings."""

    name: str
    preset: str
    learn: Mapping[str, Any] = field(default_factory=dict)
    target: str = ""  # the method class as "module:Class" (default: the registry's entry for ``name``)
    # term -> sha256 of the module source of a custom loss term given as ``fn: "pkg.mod:func"``: editing the
    # function changes the concept id, so the next run learns again instead of reusing stale concepts
    term_sources: Mapping[str, str] = field(default_factory=dict)
    variant: str = ""  # what sets this run apart from others of its method and preset ("no_att"), if any
    label: str = ""  # its name in every table: "clic/paper", "clic/paper no_att" (harness.plan.identity)
    resolved: ResolvedRun | None = None


@dataclass(frozen=True)
class Plan:
    """What the job graph needs from a suite: the method runs with their resolved settings, seeds, tasks,
    metrics and the image resolution."""

    methods: Sequence[MethodRun]
    seeds: Sequence[int]
    tasks: frozenset[str]  # which of transfer / generate / match run
    generate_objects: Sequence[str]  # empty: each pair's target object (the settings are each run's `resolved`)
    match_missing_masks: bool  # transfer into pairs without a target mask via RoI matching
    metrics: Sequence[MetricInfo]
    resolution: int
    estimate_source_masks: bool = False  # learn without the manifest's source masks (kept as ground truth)


def _metrics_for(task: str, metrics: Sequence[MetricInfo]) -> list[MetricInfo]:
    return [m for m in metrics if task in m.tasks]


def _job_id(
    concept_id: str,
    task: str,
    target_hashes: Mapping[str, str | None],
    settings: Mapping[str, Any],
    metrics: Sequence[MetricInfo],
    hashed: Callable[[Any], str] = content_id,
) -> str:
    return hashed(
        {
            "concept": concept_id,
            "task": task,
            "targets": dict(target_hashes),
            "settings": dict(settings),
            "metrics": sorted([m.name, m.version] for m in metrics),
        }
    )


def build_job_graph(
    pairs: Iterable[Pair], plan: Plan, models: Mapping[str, ModelInfo | None], supports: Mapping[str, frozenset[str]]
) -> JobGraph:
    """The learn nodes and task jobs of ``plan`` over ``pairs``.

    ``models`` maps a method name to the model it runs on (None: no model); ``supports`` maps a method
    name to its tasks. Tasks a method does not support become ``not_applicable`` jobs with the reason.
    """
    pairs = list(pairs)
    prefetch_digests(pairs)
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
        # id(settings) -> (settings, its dict): the resolved settings objects are shared by every job of a sweep
        # point, and turning one into a dict per job (dataclasses.asdict) was most of a 100k-job plan's time.
        self.dicts: dict[int, tuple[Any, dict[str, Any]]] = {}

        self.json_of: dict[int, tuple[Any, str]] = {}  # id(a dict from as_dict) -> (it, its canonical JSON)

    def as_dict(self, settings: Any) -> dict[str, Any] | None:
        if settings is None:
            return None
        known = self.dicts.get(id(settings))
        if known is None or known[0] is not settings:
            known = self.dicts[id(settings)] = (settings, settings.to_dict())
            self.json_of[id(known[1])] = (known[1], canonical_json(known[1]))
        return known[1]

    def content_id(self, data: Any) -> str:
        """:func:`content_id`, with the shared settings dicts' JSON written once (:func:`spliced_json`)."""
        return sha256_hex(spliced_json(data, self.json_of).encode())

    def add(self, pair: Pair, run: MethodRun, seed: int) -> None:
        from clic.methods import method_target

        plan, model, resolved = self.plan, self.models[run.name], run.resolved
        if resolved is None:
            raise ValueError(
                f"method run {run.label or run.name!r} has no resolved settings (plan_from_suite sets them)"
            )
        learn_mask = None if plan.estimate_source_masks else pair.source_mask
        mask_settings = None if learn_mask else resolved.match
        learn_key = {
            "source_image": file_digest(pair.source_image),
            "source_mask": optional_digest(learn_mask),
            "object_word": pair.source_object,
            "method": run.name,
            "preset": run.preset,
            "seed": seed,
            "learn": self.as_dict(resolved.learn),
            "resolution": plan.resolution,
            "weights_hash": model.weights_hash if model else None,
            "code_version": code_version(),
            "mask_settings": self.as_dict(mask_settings),
            **({"dtype": model.dtype} if model and model.dtype != "fp32" else {}),
            **({"term_sources": dict(run.term_sources)} if run.term_sources else {}),
        }
        concept_id = self.content_id(learn_key)
        target = run.target or method_target(run.name)
        self.graph.learns.setdefault(
            concept_id,
            LearnNode(
                concept_id=concept_id,
                method=run.name,
                preset=run.preset,
                seed=seed,
                method_target=target,
                source_image=pair.source_image,
                source_mask=learn_mask,
                object_word=pair.source_object,
                learn=resolved.learn,
                model=model,
                resolution=plan.resolution,
                mask_settings=mask_settings,
            ),
        )
        self.run = run
        self.common = {
            "concept_id": concept_id,
            "pair_id": pair.pair_id,
            "category": pair.category,
            "method": run.name,
            "preset": run.preset,
            "seed": seed,
            "method_target": target,
            "source_image": pair.source_image,
            "source_mask": pair.source_mask,
            "learn": resolved.learn,
        }
        # The pair id is part of a task job's identity: two rows with identical files still get one result
        # row each (their concept, which depends on the bytes only, is shared). So is every other manifest
        # field that reaches the job or its rows: the target object (it is in the transfer and matching
        # prompts) and the category (a column of every row): editing either reruns the job.
        target_hashes = {
            "pair_id": pair.pair_id,
            "target_object": pair.target_object,
            "category": pair.category,
            "target_image": file_digest(pair.target_image),
            "target_mask": optional_digest(pair.target_mask),
            "target_mask_gt": optional_digest(pair.target_mask_gt),
            "expected_image": optional_digest(pair.expected_image),
        }
        target_paths = {
            "target_image": pair.target_image,
            "target_mask": pair.target_mask,
            "target_mask_gt": pair.target_mask_gt,
            "expected_image": pair.expected_image,
        }
        if "transfer" in plan.tasks:
            self.transfers(pair, target_hashes, target_paths)
        if "generate" in plan.tasks:
            self.generations(pair, learn_key)
        if "match" in plan.tasks:
            self.job("match", SweepPoint({}, resolved.match), pair.target_object, target_hashes, **target_paths)

    def job(
        self,
        task: str,
        point: SweepPoint,
        object_word: str,
        targets: Mapping[str, str | None],
        reason: str | None = None,
        groups: Mapping[str, str] | None = None,
        match: Any = None,
        **paths: Any,
    ) -> None:
        run, tasks = self.run, self.supports[self.run.name]
        metrics = _metrics_for(task, self.plan.metrics)
        if task not in tasks:
            reason = f"method {run.name!r} does not support {task!r}"
        # the id hashes what job.task_record() returns, from the shared settings' dicts
        record = {task: self.as_dict(point.settings), **({"match": self.as_dict(match)} if match is not None else {})}
        job_id = _job_id(self.common["concept_id"], task, targets, record, metrics, self.content_id)
        if job_id in self.seen:
            return  # e.g. a generation depends on the concept only: pairs sharing a source share it
        self.seen.add(job_id)
        variant = " ".join(part for part in (run.variant, point.variant) if part)
        self.graph.jobs.append(
            TaskJob(
                job_id=job_id,
                task=task,
                settings=point.settings,
                object_word=object_word,
                metrics=tuple(m.name for m in metrics),
                status=PENDING if reason is None else STATUS_NOT_APPLICABLE,
                reason=reason,
                groups=dict(groups or {}) if reason is None else {},
                match=match,
                sweep=dict(point.requested) if point.settings is not None else None,
                variant=variant,
                label=method_label(run.name, run.preset, variant),
                **self.common,
                **paths,
            )
        )

    def transfers(self, pair: Pair, target_hashes: Mapping[str, str | None], target_paths: Mapping[str, Any]) -> None:
        resolved = self.run.resolved
        for point in resolved.transfer:
            if not pair.target_mask:
                if not self.plan.match_missing_masks:
                    self.job(
                        "transfer",
                        point,
                        pair.target_object,
                        target_hashes,
                        reason="no target mask, and match.enabled is false",
                        **target_paths,
                    )
                    continue
                # the mask is predicted first, with the method's resolved matching settings
                reason = (
                    None
                    if resolved.match is not None
                    else f"no target mask, and method {self.run.name!r} cannot predict one (no RoI matching)"
                )
                self.job(
                    "transfer",
                    point,
                    pair.target_object,
                    target_hashes,
                    match=resolved.match,
                    reason=reason,
                    **target_paths,
                )
                continue
            self.job("transfer", point, pair.target_object, target_hashes, **target_paths)

    def generations(self, pair: Pair, learn_key: Mapping[str, Any]) -> None:
        plan, run = self.plan, self.run
        for object_word, point in itertools.product(
            plan.generate_objects or [pair.target_object], run.resolved.generate
        ):
            settings = self.as_dict(point.settings)
            shared = {"method": run.name, "preset": run.preset, "learn": learn_key["learn"]}
            # A concept's diversity is over one object; classifying concepts pools every object (by default
            # each pair's own target object, so per-object groups would split the concepts) and every
            # category: the class set is every concept of the run (ConceptExpress classifies among all).
            groups = {
                SEEDS: content_id(
                    {
                        **shared,
                        "kind": SEEDS,
                        "settings": settings,
                        "object": object_word,
                        "source": learn_key["source_image"],
                        "source_mask": learn_key["source_mask"],
                    }
                ),
                CONCEPTS: content_id({**shared, "kind": CONCEPTS, "settings": settings}),
            }
            # the object word is in the prompt; the category is a column of every row: editing either reruns it
            self.job("generate", point, object_word, {"category": pair.category, "object": object_word}, groups=groups)


# ------------------------------------------------------------------------------------------ groups
GROUP_RESULT_PREFIX = "group-"  # + kind, group id, membership hash: the result id of a group's values


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
