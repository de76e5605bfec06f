"""Building the job graph of a plan over its pairs: one learn node per concept and the task jobs that use it,
each with its content-hashed id (the rules are in :mod:`harness.plan.jobs`'s docstring)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from clic.hashing import sha256_hex

from ..groups import CONCEPTS, SEEDS
from ..store import STATUS_NOT_APPLICABLE, canonical_json
from .digests import code_version, file_digest, optional_digest, prefetch_digests, spliced_json
from .identity import method_label
from .jobs import (
    PENDING,
    JobGraph,
    LearnNode,
    MethodRun,
    MetricInfo,
    ModelInfo,
    Pair,
    Plan,
    SweepPoint,
    TaskJob,
    content_id,
)


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
            "metrics": sorted(m.identity() for m in metrics),  # names are unique: no dict is compared
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
        """The learn node of (pair, run, seed) and its task jobs, each once."""
        if run.resolved is None:
            raise ValueError(
                f"method run {run.label or run.name!r} has no resolved settings (plan_from_suite sets them)"
            )
        learn_key = self.learn_key(pair, run, seed)
        concept_id = self.content_id(learn_key)
        target = self.add_learn_node(concept_id, pair, run, seed)
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
            "learn": run.resolved.learn,
        }
        target_hashes, target_paths = _targets(pair)
        if "transfer" in self.plan.tasks:
            self.transfers(pair, target_hashes, target_paths)
        if "generate" in self.plan.tasks:
            self.generations(pair, learn_key)
        if "match" in self.plan.tasks:
            self.job("match", SweepPoint({}, run.resolved.match), pair.target_object, target_hashes, **target_paths)

    def learn_mask(self, pair: Pair) -> str | None:
        """The source mask the concept learns from (none when the suite estimates source masks)."""
        return None if self.plan.estimate_source_masks else pair.source_mask

    def learn_key(self, pair: Pair, run: MethodRun, seed: int) -> dict[str, Any]:
        """What a concept id hashes: the source *bytes*, the method and its settings, the model and the code."""
        model, resolved, learn_mask = self.models[run.name], run.resolved, self.learn_mask(pair)
        return {
            "source_image": file_digest(pair.source_image),
            "source_mask": optional_digest(learn_mask),
            "object_word": pair.source_object,
            "method": run.name,
            "preset": run.preset,
            "seed": seed,
            "learn": self.as_dict(resolved.learn),
            "resolution": self.plan.resolution,
            "weights_hash": model.weights_hash if model else None,
            "code_version": code_version(),
            "mask_settings": self.as_dict(None if learn_mask else resolved.match),
            **({"dtype": model.dtype} if model and model.dtype != "fp32" else {}),
            **({"term_sources": dict(run.term_sources)} if run.term_sources else {}),
        }

    def add_learn_node(self, concept_id: str, pair: Pair, run: MethodRun, seed: int) -> str:
        """The concept's learn node, once however many pairs share its source; returns the method's target."""
        from clic.methods import method_target

        learn_mask, target = self.learn_mask(pair), run.target or method_target(run.name)
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
                learn=run.resolved.learn,
                model=self.models[run.name],
                resolution=self.plan.resolution,
                mask_settings=None if learn_mask else run.resolved.match,
            ),
        )
        return target

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


def _targets(pair: Pair) -> tuple[dict[str, str | None], dict[str, Any]]:
    """What a task job's id hashes of its target, and the target's paths.

    The pair id is part of a task job's identity: two rows with identical files still get one result row each
    (their concept, which depends on the bytes only, is shared). So is every other manifest field that reaches
    the job or its rows: the target object (it is in the transfer and matching prompts) and the category (a
    column of every row): editing either reruns the job."""
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
    return target_hashes, target_paths
