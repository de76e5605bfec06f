"""The job graph's parts: learn nodes (one per concept), the task jobs that use them, the plan they come from,
and the ids of group results. :mod:`harness.plan.job_graph` builds the graph.

Ids are content hashes. A concept id hashes the source image and mask *bytes* (not their paths), the
method, preset, seed, learning overrides, the model's weights hash and the code version; a job id hashes
its concept id, the target bytes, the task settings and the metric names/versions. Renaming a folder
therefore reruns nothing, and changing any setting reruns exactly the jobs it touches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clic.hashing import json_sha256

from ..groups import CONCEPTS, GROUP_KINDS, SEEDS, GroupKey  # noqa: F401 - re-exported: group metrics' set kinds
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
    # The suite's options of the families it reads (clip.model, lpips.net, ...) that can change its numbers: part
    # of the ids of the jobs it scores, so a suite that changes them scores again instead of resuming old values.
    options: Mapping[str, Any] = field(default_factory=dict)

    def identity(self) -> list:
        """What a job id or group result id records of this metric (no options: the ids of before options were)."""
        return [self.name, self.version, dict(self.options)] if self.options else [self.name, self.version]


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
    versions = sorted(m.identity() for m in metrics if m.group_by == key[0])  # names are unique: no dict is compared
    membership = content_id({"members": sorted(job.job_id for job in members), "metrics": versions})
    return group_prefix(key) + membership[:12]
