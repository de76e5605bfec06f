"""One run on the Ray cluster: submits the learns, tasks and metric calls the scheduler asks for, waits for them,
retries what ran out of memory with a larger packing, and hands what finished to the recorder."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import store
from ..plan.jobs import GroupKey, JobGraph, Plan, group_prefix, group_result_id
from . import run_folder
from .cluster import WarmWorkers, job_options, job_slots
from .records import Recorder, mean_values
from .scheduler import Learn, RunTask, Scheduler, Score, ScoreGroup, Submission, larger_packing, packing_text
from .scorer import forget_metric_scorer, group_member_spec, metric_pool_shape, metric_scorers
from .worker import run_task_job
from .worker_learn import learn_concept_task

if TYPE_CHECKING:
    from ..plan.suite_model import Suite


def _method_options(suite: Suite, plan: Plan) -> dict[tuple[str, str], dict[str, float]]:
    """(method, preset) -> its own num_gpus / num_cpus (harness.execute.packing): per method, packed by memory."""
    from .packing import method_resources

    return {
        key: {"num_gpus": entry["num_gpus"], "num_cpus": entry["num_cpus"]}
        for key, entry in method_resources(suite, plan.resolution).items()
    }


class RayRun:
    """One run on the cluster: submits what the scheduler asks for and reports what finished."""

    def __init__(
        self,
        suite: Suite,
        plan: Plan,
        graph: JobGraph,
        scheduler: Scheduler,
        recorder: Recorder,
        run_dir: Path,
        max_in_flight: int | None,
        allow_random_metrics: bool,
        quiet: bool,
        warming: WarmWorkers | None = None,
        mirror: Any = None,
    ) -> None:
        import ray
        from tqdm import tqdm

        # A run folder on object storage (harness.remote_folder): its workers upload what they write
        # there, and the driver pushes its own files every few seconds.
        self.mirror, self.remote = mirror, (mirror.uri if mirror is not None else None)
        self.plan, self.graph, self.scheduler, self.recorder, self.run_dir = plan, graph, scheduler, recorder, run_dir
        options = job_options(suite)
        self.slots = job_slots(suite)
        scheduler.max_in_flight = max_in_flight or 2 * int(ray.cluster_resources().get("CPU", 1))
        self.options, self.max_retries, self.quiet = options, suite.resources.max_retries, quiet
        self.method_options = _method_options(suite, plan)
        self.learn_function, self.task_function = ray.remote(learn_concept_task), ray.remote(run_task_job)
        self.learn_remote = self.learn_function.options(**options)
        self.task_remote = self.task_function.options(**options, num_returns=2)
        # Out of memory is retried with a larger packing (scheduler.larger_packing), keyed by concept or job id:
        self.retry_options: dict[str, dict[str, float]] = {}  # the resources of the next attempt
        self.out_of_memory: dict[str, list[str]] = {}  # the packings that ran out of memory, in order
        jobs_to_run = len(graph.jobs) - recorder.summary.skipped - recorder.summary.not_applicable
        self.warming = warming or WarmWorkers.start(suite, recorder.models, max(jobs_to_run, 1))
        self._start_scorers(suite, allow_random_metrics)
        recorder.weights_of = self.weights_of
        self.concepts_root = str(run_dir / store.CONCEPTS_DIR)
        self.learned: dict[str, dict] = {}  # concept id -> the learn task's output
        self.records: dict[str, dict] = {}  # job id -> its task's small record (artifacts, timings), until written
        self.samples: dict[str, Any] = {}  # job id -> the object ref of its samples, until scored
        self.pending: dict[Any, Submission] = {}
        self.group_ids = {key: group_result_id(key, members, plan.metrics) for key, members in scheduler.groups.items()}
        self.progress = tqdm(
            total=len(graph.jobs) - recorder.summary.skipped - recorder.summary.not_applicable,
            disable=quiet,
            unit="job",
            desc="jobs",
        )
        recorder.on_record = self.show

    def _start_scorers(self, suite: Suite, allow_random_metrics: bool) -> None:
        """The metric actors hold the models once for the whole run (and the driver's next runs). Jobs start
        while they load them; their answer is awaited with them, and an actor that cannot start (e.g. random
        CLIP weights refused) still stops the run at once."""
        import ray

        plan = self.plan
        targets = {m.name: m.target for m in plan.metrics}
        count, actor_gpus = metric_pool_shape(suite.metric_actors, targets, ray.cluster_resources())
        self.scorers = (
            metric_scorers(
                targets, allow_random_metrics, {k: dict(v) for k, v in suite.metric_options.items()}, count, actor_gpus
            )
            if plan.metrics
            else []
        )
        self.scorer_load = [0] * len(self.scorers)  # calls in flight per actor: a batch goes to the least loaded
        self.scored_by: dict[Any, int] = {}
        self.metric_pool = {"actors": len(self.scorers), "num_gpus_each": actor_gpus}
        self.weights_pending = [self.scorers[0].weights.remote()] if plan.metrics else []
        self.metric_weights: dict[str, str] = {}

    def show(self) -> None:
        summary = self.recorder.summary
        self.progress.update(1)
        self.progress.set_postfix(
            learned=f"{len(self.scheduler.learned)}/{self.scheduler.concepts_total}",
            done=summary.done,
            failed=summary.failed,
            skipped=summary.skipped,
            refresh=False,
        )

    def weights_of(self, name: str) -> str | None:
        import ray

        if self.weights_pending:
            try:
                self.metric_weights.update(ray.get(self.weights_pending.pop()))
            except Exception:
                forget_metric_scorer()
                raise
        return self.metric_weights.get(name)

    def settle_weights(self) -> None:
        """Every job failed before any was scored: the run record still records the metric weights."""
        if self.weights_pending:
            try:
                self.weights_of("")
            except Exception:
                pass

    def _options(self, key: str, method: str, preset: str) -> dict[str, Any]:
        """Ray options of a learn or task: the suite's, the method's own (packing), a larger packing after OOM."""
        return {**self.options, **self.method_options.get((method, preset), {}), **self.retry_options.get(key, {})}

    def _remote(self, key: str, learn: bool, method: str, preset: str) -> Any:
        """The learn or task function with the resources of this attempt (larger after running out of memory)."""
        options = self._options(key, method, preset)
        if options == self.options:
            return self.learn_remote if learn else self.task_remote
        function = self.learn_function if learn else self.task_function
        return function.options(**options, **({} if learn else {"num_returns": 2}))

    def submit(self, submission: Submission) -> None:
        if isinstance(submission, Learn):
            node = self.graph.learns[submission.concept_id]
            ref = self._remote(submission.concept_id, True, node.method, node.preset).remote(
                node, self.concepts_root, self.remote
            )
        elif isinstance(submission, RunTask):
            job = submission.job
            node = self.graph.learns[job.concept_id]
            ref, self.samples[job.job_id] = self._remote(job.job_id, False, job.method, job.preset).remote(
                job, self.learned[job.concept_id], node.model, self.plan.resolution, str(self.run_dir), self.remote
            )
        elif isinstance(submission, Score):  # the workers' sample refs: Ray hands their values to the actor
            ref = self._scorer().score.remote(*[self.samples[job.job_id] for job in submission.jobs])
        else:
            kinds = [m.name for m in self.plan.metrics if m.group_by == submission.key[0]]
            specs = [group_member_spec(job, self.run_dir, self.remote) for job in submission.members]
            ref = self._scorer().score_group.remote(kinds, submission.key[1], specs)
        if isinstance(submission, (Score, ScoreGroup)):
            self.scored_by[ref] = self._last_scorer
            self.scorer_load[self._last_scorer] += 1
        self.pending[ref] = submission

    def _scorer(self) -> Any:
        """The metric actor with the fewest calls in flight (the pool scores batches of several jobs in parallel)."""
        self._last_scorer = min(range(len(self.scorers)), key=self.scorer_load.__getitem__)
        return self.scorers[self._last_scorer]

    def loop(self) -> None:
        import ray

        for submission in self.scheduler.next_submissions():
            self.submit(submission)
        while self.pending:
            refs = [*self.pending, *self.weights_pending]
            ready, _ = ray.wait(refs, num_returns=1)
            ready += ray.wait([r for r in refs if r not in ready], num_returns=len(refs) - len(ready), timeout=0)[0]
            for ref in ready:
                if ref in self.weights_pending:
                    self.weights_of("")
                else:
                    self.finished(self.pending.pop(ref), ref)
            for submission in self.scheduler.next_submissions():
                self.submit(submission)
            if self.mirror is not None:
                self.mirror.push_if_due()
        self.progress.close()

    def finished(self, submission: Submission, ref: Any) -> None:
        """Fetch one finished call's small result, tell the scheduler, and write the rows it completes."""
        import ray

        if ref in self.scored_by:
            self.scorer_load[self.scored_by.pop(ref)] -= 1
        try:
            result = ray.get(ref)
        except Exception as error:  # a failure is recorded and the run goes on
            if not self.retried_for_memory(submission, error):
                self.failed(submission, error)
            return
        if isinstance(submission, Learn):
            self.learned[submission.concept_id] = result
            if result.get("relearned"):
                print(f"{result['relearned']}: the concept was broken and has been learned again", file=sys.stderr)
            if result.get("learned"):
                self.recorder.summary.learn_node_ids[result["node_id"]] += 1
            self.scheduler.on_finished(submission, ok=True)
        elif isinstance(submission, RunTask):
            self.recorder.summary.node_ids[result["node_id"]] += 1
            self.records[submission.job.job_id] = {**result, "notes": self.job_notes(submission.job)}
            for job in self.scheduler.on_finished(submission, ok=True):  # done now when nothing scores it
                self.recorder.ok(job, self.records.pop(job.job_id), [], 0.0)
                self.samples.pop(job.job_id, None)
        elif isinstance(submission, Score):
            for job, per_image in zip(self.scheduler.on_finished(submission, ok=True), result):
                values = mean_values([image["values"] for image in per_image])  # a generation: mean over images
                self.recorder.ok(job, self.records.pop(job.job_id), values, sum(i["seconds"] for i in per_image))
                self.samples.pop(job.job_id, None)
        else:
            self.scheduler.on_finished(submission, ok=True)
            self._record_group(submission.key, result)

    def retried_for_memory(self, submission: Submission, error: BaseException) -> bool:
        """A learn or task that ran out of memory runs again with a larger packing, up to ``max_retries`` times."""
        import ray

        if not isinstance(submission, (Learn, RunTask)) or not run_folder.is_out_of_memory(error):
            return False
        work = self.graph.learns[submission.concept_id] if isinstance(submission, Learn) else submission.job
        key = submission.concept_id if isinstance(submission, Learn) else submission.job.job_id
        tried = self.out_of_memory.setdefault(key, [])
        current = self._options(key, work.method, work.preset)
        tried.append(packing_text(current))
        if len(tried) > self.max_retries:
            return False
        node_cpus = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=1)
        self.retry_options[key] = larger_packing(current, node_cpus)
        if not self.quiet:
            what = "learning concept" if isinstance(submission, Learn) else "job"
            print(
                f"{what} {key}: out of memory with {tried[-1]}; retry {len(tried)} of {self.max_retries} with "
                f"{packing_text(self.retry_options[key])}",
                file=sys.stderr,
            )
        self.submit(submission)
        return True

    def job_notes(self, job: Any) -> str | None:
        """What happened on a job's way, for its row: its concept's learn resumed from a snapshot, out of memory."""
        resumed = (self.learned.get(job.concept_id) or {}).get("resumed_from_step")
        notes = [f"learn resumed from its step-{resumed} snapshot"] if resumed else []
        return "; ".join(filter(None, [*notes, self.memory_note(job)])) or None

    def memory_note(self, job: Any) -> str | None:
        """What running out of memory did to a job (its concept's learning, then the job itself), for its row."""
        notes = []
        for what, key in (("learn", job.concept_id), ("task", job.job_id)):
            tried = self.out_of_memory.get(key)
            if tried:
                ran = f"{what} ran out of memory with {', then '.join(tried)}"
                notes.append(
                    ran
                    if len(tried) > self.max_retries
                    else f"{ran}; retried with {packing_text(self.retry_options[key])}"
                )
        return "; ".join(notes) or None

    def failed(self, submission: Submission, error: BaseException) -> None:
        stage = "metric: " if isinstance(submission, Score) else ""
        for job in self.scheduler.on_finished(submission, ok=False):
            note = self.memory_note(job) if isinstance(submission, (Learn, RunTask)) else None
            self.recorder.failed(job, error, f"{note} (max_retries {self.max_retries}): {stage}" if note else stage)
            self.records.pop(job.job_id, None)
            self.samples.pop(job.job_id, None)
        if isinstance(submission, ScoreGroup):  # only the group's values are lost; its members keep their rows
            self._record_group(submission.key, None, error)

    def _record_group(
        self, key: GroupKey, result: Mapping[str, Any] | None, error: BaseException | None = None
    ) -> None:
        self.recorder.group(key, self.scheduler.groups[key], self.group_ids[key], group_prefix(key), result, error)
