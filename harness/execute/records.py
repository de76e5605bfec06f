"""The driver's side of a run's results: result rows built from a job's planned identity and its outcome,
written one file per job as soon as they are known (a killed driver loses only in-flight jobs)."""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..groups import ALL_CATEGORIES, CONCEPTS, SEEDS, GroupKey
from ..plan.jobs import MetricInfo, ModelInfo, TaskJob, code_version
from . import run_folder

NO_MODEL_LABEL = "none (no model)"  # the weights label of methods that load no model (cut-and-paste)
MetricValues = list[tuple[str, str, float]]  # (metric, value name, value)


@dataclass
class RunSummary:
    run_dir: Path  # a run into object storage: its local staging folder (``remote`` is the run folder's URI)
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
    cold_start_seconds: float = 0.0  # the slowest worker's warm-up (imports, model load): once per worker process
    warm_overhead_share: float = 0.0  # the overhead share of the wall time after the cold start
    node_ids: Counter = field(default_factory=Counter)  # node -> task jobs it ran
    learn_node_ids: Counter = field(default_factory=Counter)  # node -> concepts it learned in this run
    peak_in_flight: int = 0  # most task jobs submitted at once (bounded by max_in_flight)
    infrastructure_failed: int = 0  # of `failed`: the machine's failures (disk full, lost worker), rerun next time
    failed_earlier: int = 0  # jobs of the plan skipped because their stored result is a failure (no --retry-failed)
    remote: str | None = None  # the run folder's URI when it is on object storage (harness.remote_folder)

    @property
    def jobs_run(self) -> int:
        return self.done + self.failed


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def one_line(error: BaseException) -> str:
    """The last line of an error's message (Ray wraps task errors in a long traceback)."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def mean_values(per_image: Sequence[MetricValues]) -> MetricValues:
    """One job's metric values from its images' values: the mean per (metric, value name), in first-seen order."""
    sums: dict[tuple[str, str], list[float]] = {}
    for values in per_image:
        for name, value_name, value in values:
            sums.setdefault((name, value_name), []).append(value)
    return [(name, value_name, float(np.mean(values))) for (name, value_name), values in sums.items()]


def settings_columns(job: TaskJob) -> dict[str, Any]:
    """What the job ran with, as the plan resolved it: every value in ``settings`` (JSON: the task's settings,
    the matching that predicted a missing mask, the concept's learning config), the suite's own values for
    this job in ``sweep`` (what methods are paired on), and the values tables filter on most as typed columns
    (never null because a preset supplied them; null where the method reads no such setting)."""
    learn = job.learn
    steps = getattr(learn, "total_steps", getattr(learn, "steps", None))
    return {
        "settings": store.canonical_json(job.settings_record()),
        "sweep": store.canonical_json(dict(job.sweep)) if job.sweep is not None else None,
        "t_start": job.t_start,
        "eta": job.eta,
        "task_steps": getattr(job.settings, "steps", None),
        "guidance_scale": getattr(job.settings, "guidance_scale", None),
        "learn_steps": int(steps) if steps is not None else None,
        "learn_lr": getattr(learn, "lr", None),
    }


def base_row(job: TaskJob, run_id: str, models: Mapping[str, ModelInfo | None]) -> dict[str, Any]:
    """The columns every row of ``job`` has: its planned identity, model and code version."""
    model = models.get(job.method)
    return {
        "run_id": run_id,
        "job_id": job.job_id,
        "concept_id": job.concept_id,
        "task": job.task,
        "pair_id": job.pair_id,
        "category": job.category,
        "method": job.method,
        "preset": job.preset,
        "label": job.label,
        "variant": job.variant,
        "seed": job.seed,
        **settings_columns(job),
        "object_word": job.object_word,
        "model_id": model.model_id if model else None,
        "weights_hash": model.weights_hash if model else None,
        "weights_label": model.weights_label if model else NO_MODEL_LABEL,
        "code_version": code_version(),
        "value": math.nan,
    }


class Recorder:
    """Writes each job's (or group's) rows and keeps the run's counts."""

    def __init__(
        self,
        run_dir: Path,
        summary: RunSummary,
        models: Mapping[str, ModelInfo | None],
        metrics: Sequence[MetricInfo],
        weights_of: Callable[[str], str | None] = lambda name: None,
        on_record: Callable[[], None] = lambda: None,
    ) -> None:
        self.run_dir, self.summary, self.models = run_dir, summary, models
        self.metric_info = {metric.name: metric for metric in metrics}
        self.weights_of = weights_of
        self.on_record = on_record
        self.learn_counted: set[str] = set()  # a concept's learning time is counted once, not once per job

    def base(self, job: TaskJob) -> dict[str, Any]:
        return base_row(job, self.summary.run_id, self.models)

    def metric_rows(self, base: dict[str, Any], values: MetricValues) -> list[dict[str, Any]]:
        """One row per value on top of ``base`` (just ``base`` when there are none)."""
        return [
            {
                **base,
                "metric": value_name,
                "value": value,
                "metric_version": self.metric_info[name].version,
                "higher_is_better": self.metric_info[name].values.get(value_name, True),
                "metric_scale": self.metric_info[name].scale,
                "metric_weights": self.weights_of(name),
            }
            for name, value_name, value in values
        ] or [base]

    def not_applicable(self, job: TaskJob) -> None:
        store.write_job_results(
            self.run_dir,
            job.job_id,
            [{**self.base(job), "status": job.status, "error": job.reason, "finished_at": now_iso()}],
        )
        self.summary.not_applicable += 1

    def ok(self, job: TaskJob, record: Mapping[str, Any], values: MetricValues, metric_seconds: float) -> None:
        base = {
            **self.base(job),
            **record["artifacts"],
            "status": store.STATUS_OK,
            "learn_seconds": record["learn_seconds"],
            "task_seconds": record["task_seconds"],
            "peak_memory_mb": record.get("peak_memory_mb"),
            "learn_peak_memory_mb": record.get("learn_peak_memory_mb"),
            "metric_seconds": metric_seconds,
            "finished_at": now_iso(),
            "notes": record.get("notes"),
        }
        self._write(job, self.metric_rows(base, values), failed=False)

    def failed(self, job: TaskJob, error: BaseException, stage: str = "") -> None:
        if run_folder.is_infrastructure_error(error):  # the machine's failure, not the job's verdict
            self.summary.infrastructure_failed += 1
            stage = run_folder.INFRASTRUCTURE_PREFIX + stage
        self._write(
            job,
            [
                {
                    **self.base(job),
                    "status": store.STATUS_FAILED,
                    "error": stage + one_line(error),
                    "finished_at": now_iso(),
                }
            ],
            failed=True,
        )

    def _write(self, job: TaskJob, rows: list[dict[str, Any]], failed: bool) -> None:
        try:
            store.write_job_results(self.run_dir, job.job_id, rows)
        except OSError as error:  # e.g. the disk is full: the job stays unrecorded and runs again next time
            print(
                f"{self.run_dir}: could not record job {job.job_id} ({one_line(error)}); it runs again next time",
                file=sys.stderr,
            )
            already_counted = str(rows[0].get("error") or "").startswith(run_folder.INFRASTRUCTURE_PREFIX)
            self.summary.infrastructure_failed += not already_counted
            failed = True
        self.summary.failed += failed
        self.summary.done += not failed
        if (self.summary.done + self.summary.failed) % store.COMPACT_EVERY_JOBS == 0:
            # a resume reads a few compacted files instead of one file per job, and the final compaction is short
            try:
                store.compact_results(self.run_dir)
            except OSError as error:  # the per-job files stay the journal; the end of the run tries again
                print(f"{self.run_dir}: compaction postponed ({one_line(error)})", file=sys.stderr)
        row = rows[0]
        self.summary.work_seconds += float(row.get("task_seconds") or 0.0) + float(row.get("metric_seconds") or 0.0)
        if job.concept_id not in self.learn_counted:
            self.learn_counted.add(job.concept_id)
            self.summary.work_seconds += float(row.get("learn_seconds") or 0.0)
        self.on_record()

    def group(
        self,
        key: GroupKey,
        members: Sequence[TaskJob],
        result_id: str,
        prefix: str,
        result: Mapping[str, Any] | None,
        error: BaseException | None = None,
    ) -> None:
        """Write a group's values (or its failure) under the group's result id, replacing older memberships'."""
        first = min(members, key=lambda job: job.job_id)
        # A seeds group is one source's (its pair id is the first pair with that source, so it pairs with other
        # methods' groups on that source); a concepts group spans pairs. Neither has one seed.
        base = {
            **self.base(first),
            "job_id": result_id,
            "concept_id": None,
            "seed": None,
            "pair_id": first.pair_id if key[0] == SEEDS else None,
            "finished_at": now_iso(),
        }
        if key[0] == CONCEPTS:  # its members may differ in object word and category: the row says what they share
            objects = {job.object_word for job in members}
            categories = {job.category for job in members}
            base.update(
                object_word=objects.pop() if len(objects) == 1 else None,
                category=categories.pop() if len(categories) == 1 else ALL_CATEGORIES,
            )
        if error is not None or result is None:
            rows = [{**base, "status": store.STATUS_FAILED, "error": "group metric: " + one_line(error)}]
        else:
            base = {**base, "status": store.STATUS_OK, "metric_seconds": result["seconds"]}
            self.summary.work_seconds += result["seconds"]
            rows = self.metric_rows(base, result["values"])
        store.write_job_results(self.run_dir, result_id, rows)
        store.remove_superseded_results(self.run_dir, prefix, keep=result_id)
        self.summary.groups_failed += error is not None
        self.summary.groups_scored += error is None
