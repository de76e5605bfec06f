"""Run a suite on Ray: the thin adapter between the scheduling policy and the cluster.

:class:`~harness.execute.scheduler.Scheduler` decides what to submit (learn first, bounded in flight, groups
when complete); this module turns each submission into a Ray call, waits for calls to finish and reports them
back; :class:`~harness.execute.records.Recorder` writes each job's rows as soon as they are known, so a killed
driver loses only in-flight jobs and a rerun skips everything already written. Task outputs (images) go from
the workers to the metric actor as object refs; the driver only sees small records.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import platform
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .. import store
from . import resume, run_folder
from ..plan.jobs import (GroupKey, JobGraph, ModelInfo, Pair, Plan, build_job_graph, code_version,
                         git_describe, group_members, group_prefix, group_result_id)
from ..plan import file_facts
from ..plan.resolve import describe_models, load_pairs, method_tasks, plan_from_suite
from .records import NO_MODEL_LABEL, Recorder, RunSummary, mean_values, now_iso, one_line  # noqa: F401 - re-exported
from .scheduler import (Learn, RunTask, Scheduler, Score, ScoreGroup, Submission, jobs_to_run, larger_packing,
                        packing_text)
from .scorer import (METRIC_ACTOR_PREFIX, forget_metric_scorer, group_member_spec, metric_pool_shape,  # noqa: F401
                     metric_scorer, metric_scorers)
from .worker import learn_concept_task, run_task_job, warm_worker

if TYPE_CHECKING:
    from ..plan.suite import Suite


# Set when this process started a local Ray cluster (not when it joined one): an interrupted or refused run
# stops what it started (harness.cli), and leaves others' clusters alone.
STARTED_LOCAL_CLUSTER: list[bool] = []


def _connect(address: str | None, num_cpus: int | None) -> None:
    import os

    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if address:
            ray.init(address=address)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
            STARTED_LOCAL_CLUSTER.append(True)


def stop_started_cluster() -> bool:
    """Shut down the local Ray cluster this process started, if any; True when one was stopped."""
    if not STARTED_LOCAL_CLUSTER:
        return False
    import ray

    STARTED_LOCAL_CLUSTER.clear()
    ray.shutdown()
    return True


def _check_cluster(suite: "Suite") -> None:
    """Before any job is submitted: a request no node can satisfy is refused in one line per problem, instead of
    Ray repeating "No available node types can fulfill resource request" without end (harness.plan.preflight)."""
    import ray

    from ..plan.preflight import PreflightFailed, cluster_problems

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    problems = cluster_problems(suite, nodes)
    for index, spec in enumerate(suite.methods):  # a method entry's own num_gpus / num_cpus
        if spec.resources:
            own = dataclasses.replace(suite, resources=dataclasses.replace(suite.resources, **spec.resources))
            problems += [line.replace(": resources", f": methods[{index}].resources", 1)
                         for line in cluster_problems(own, nodes) if ": device: " not in line]
    problems = list(dict.fromkeys(problems))
    if problems:
        stop_started_cluster()  # a cluster this run started for nothing is not left behind
        raise PreflightFailed(problems)


# module -> its distribution: run.json records their versions
VERSIONED = {"torch": "torch", "diffusers": "diffusers", "ray": "ray", "transformers": "transformers",
             "open_clip": "open_clip_torch", "pyarrow": "pyarrow", "pandas": "pandas"}


def _versions() -> dict[str, str]:
    """The versions of the libraries results depend on, from the installed distributions' metadata: importing
    them for ``__version__`` (diffusers, transformers, open_clip: seconds each) was most of a resume's time."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name, distribution in VERSIONED.items():
        module = sys.modules.get(name)
        if getattr(module, "__version__", None):
            versions[name] = module.__version__
            continue
        try:
            versions[name] = version(distribution)
        except PackageNotFoundError:
            continue
    return versions


def execute(suite: "Suite", pairs: Sequence[Pair], run_dir: str | Path, *, wait: bool = True,
            remote: str | None = None, **options: Any) -> RunSummary:
    """Run the jobs of ``suite`` over ``pairs`` that ``run_dir`` has not finished yet, holding the run folder's
    lock (a concurrent run on it waits, or with ``wait=False`` is refused: :mod:`harness.execute.run_folder`).
    With ``remote`` (a URI on object storage) ``run_dir`` is its local staging folder, pulled under the remote
    lease first and pushed as the run goes (:mod:`harness.remote_folder`).
    ``options``: address, num_cpus, max_in_flight, retry_failed, allow_random_metrics, quiet."""
    for option in ("max_in_flight", "num_cpus"):  # the CLI says so in one line (harness.guards); the API as well
        if options.get(option) is not None and options[option] < 1:
            raise ValueError(f"{option} must be at least 1, got {options[option]}")
    run_id = uuid.uuid4().hex[:12]
    if remote:
        return _execute_remote(suite, pairs, run_dir, remote, run_id=run_id, wait=wait, **options)
    with run_folder.locked(Path(run_dir).resolve(), run_id, wait=wait):  # "waiting" is said even with --quiet
        return _execute_locked(suite, pairs, run_dir, run_id=run_id, **options)


def _execute_remote(suite: "Suite", pairs: Sequence[Pair], run_dir: str | Path, remote: str, *, run_id: str,
                    wait: bool, **options: Any) -> RunSummary:
    """:func:`execute` into a run folder on object storage: the remote lease, then the staging folder's own lock
    (two runs of one machine), pull, run, push (also when the run stops on an error: what it recorded stands)."""
    from ..remote_folder import RemoteFolder

    folder = RemoteFolder(remote, Path(run_dir).resolve())
    with folder.leased(run_id, wait=wait, quiet=bool(options.get("quiet"))), \
            run_folder.locked(folder.local, run_id, wait=wait, quiet=True):
        folder.pull()
        try:
            summary = _execute_locked(suite, pairs, folder.local, run_id=run_id, mirror=folder, **options)
        finally:
            folder.push()
    summary.remote = folder.uri
    return summary


def _execute_locked(suite: "Suite", pairs: Sequence[Pair], run_dir: str | Path, *, run_id: str,
                    address: str | None = None, num_cpus: int | None = None, max_in_flight: int | None = None,
                    retry_failed: bool = False, allow_random_metrics: bool = False, quiet: bool = False,
                    mirror: Any = None) -> RunSummary:
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = store.remove_stale_temps(run_dir)
    if stale and not quiet:
        print(f"{run_dir}: removed {stale} half-written file(s) left by an earlier, killed run", file=sys.stderr)
    for line in run_folder.audit(run_dir):  # unreadable results, missing artifacts: redone, one line each
        print(line, file=sys.stderr)
    started, start_clock = now_iso(), time.perf_counter()
    models, native_resolution = describe_models(suite)
    warming: WarmWorkers | None = None
    if not store.has_results(run_dir):
        # A fresh run folder certainly has jobs to run: the workers import the method library and load the
        # model (seconds each) while the driver plans. A resumed run plans first: it may have nothing to run.
        _connect(address, num_cpus)
        _check_cluster(suite)
        warming = WarmWorkers.start(suite, models)
    plan = plan_from_suite(suite, suite.resolution or native_resolution)
    file_facts.use_run_folder(run_dir)
    fingerprint = resume.plan_fingerprint(suite.to_dict(), plan, models, pairs)
    finished_plan = None if warming is not None or retry_failed else resume.finished_plan(run_dir, fingerprint)
    if finished_plan is not None:  # the same plan as the folder's last one, every result in: nothing to plan
        summary = RunSummary(run_dir=run_dir, run_id=run_id, total_jobs=finished_plan.jobs)
        summary.skipped, summary.failed_earlier = finished_plan.jobs, finished_plan.failed
        if not (run_dir / store.PAIRS_FILE).is_file():
            store.write_pairs(run_dir, [dataclasses.asdict(pair) for pair in pairs])
        store.compact_results(run_dir)  # an earlier run killed before its compaction
        summary.wall_seconds = time.perf_counter() - start_clock
        _write_run_record(run_dir, suite, plan, summary, started, models, {}, slots=0)
        return summary
    graph: JobGraph = build_job_graph(pairs, plan, models, method_tasks(plan))
    file_facts.save(run_dir)  # the files' checks and digests, for the next run on this folder
    weights = {name: info.weights_hash if info else None for name, info in models.items()}
    for line in run_folder.remove_superseded(run_dir, graph.jobs, weights, code_version()):  # edited manifest rows
        print(line, file=sys.stderr)
    summary = RunSummary(run_dir=run_dir, run_id=run_id, total_jobs=len(graph.jobs))
    store.write_pairs(run_dir, [{f.name: getattr(pair, f.name) for f in dataclasses.fields(Pair)} for pair in pairs])

    # A job whose recorded failure was the machine's (disk full, lost worker) is not finished: it runs again.
    machine_failures = run_folder.infrastructure_failures(run_dir)
    statuses = {job_id: status for job_id, status in store.job_statuses(run_dir).items()
                if job_id not in machine_failures}
    finished = {job_id for job_id, status in statuses.items() if not retry_failed or status != store.STATUS_FAILED}
    todo = jobs_to_run(graph.jobs, statuses, retry_failed)
    summary.skipped = len(graph.jobs) - len(todo)
    summary.failed_earlier = sum(statuses.get(job.job_id) == store.STATUS_FAILED for job in graph.jobs) \
        if not retry_failed else 0
    recorder = Recorder(run_dir, summary, models, plan.metrics)
    for job in [j for j in todo if j.status == store.STATUS_NOT_APPLICABLE]:
        recorder.not_applicable(job)
    todo = [job for job in todo if job.status != store.STATUS_NOT_APPLICABLE]
    # Group metrics score sets of jobs (harness.plan.jobs.GROUP_KINDS) once every member has an ok result, in
    # this run or an earlier one: the metric actor reads the members' images back from their artifacts.
    planned_groups = {key: group_result_id(key, members, plan.metrics)
                      for key, members in group_members(graph, plan.metrics).items()}
    # The result ids of this plan: tables read these rows, and rows of earlier plans of the folder are left out.
    store.write_plan(run_dir, (job.job_id for job in graph.jobs), planned_groups.values(), fingerprint)
    groups = {key: members for key, members in group_members(graph, plan.metrics).items()
              if planned_groups[key] not in finished}
    scheduler = Scheduler(todo, max_in_flight or 1, groups,
                          ok_jobs=[job_id for job_id, status in statuses.items() if status == store.STATUS_OK],
                          scores_jobs=any(not metric.group_by for metric in plan.metrics))
    if not todo and not any(map(scheduler.group_complete, groups)):  # nothing to run: no cluster, no models
        store.compact_results(run_dir)  # an earlier run killed before its compaction
        summary.wall_seconds = time.perf_counter() - start_clock
        _write_run_record(run_dir, suite, plan, summary, started, models, {}, slots=0)
        return summary

    _connect(address, num_cpus)
    _check_cluster(suite)
    run = _RayRun(suite, plan, graph, scheduler, recorder, run_dir, max_in_flight, allow_random_metrics, quiet,
                  warming, mirror)
    run.loop()
    summary.learns_run = sum(bool(output.get("learned")) for output in run.learned.values())
    summary.peak_in_flight = scheduler.peak_running
    run.settle_weights()
    # Thousands of small per-job files read slowly (and very slowly on a shared file system): the finished run's
    # journal becomes a few row-group-sized files (below COMPACT_MIN_FILES files it stays as it is).
    store.compact_results(run_dir)
    summary.wall_seconds = time.perf_counter() - start_clock
    method_time = summary.work_seconds / run.slots
    summary.overhead_share = max(0.0, (summary.wall_seconds - method_time) / summary.wall_seconds) \
        if summary.wall_seconds > 0 and summary.jobs_run else 0.0
    summary.cold_start_seconds = run.warming.cold_start_seconds()
    warm_wall = summary.wall_seconds - summary.cold_start_seconds
    summary.warm_overhead_share = max(0.0, (warm_wall - method_time) / warm_wall) \
        if warm_wall > 0 and summary.jobs_run else 0.0
    _write_run_record(run_dir, suite, plan, summary, started, models, run.metric_weights, run.slots)
    return summary


def job_options(suite: "Suite") -> dict[str, Any]:
    """Ray options of every learn and task job of ``suite``."""
    resources = suite.resources
    # SPREAD: jobs are long and independent, so they go to the least-loaded nodes instead of filling the
    # driver's node first (Ray's default prefers locality, which starves other nodes of short jobs).
    options = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
               "max_retries": resources.max_retries, "retry_exceptions": False, "scheduling_strategy": "SPREAD"}
    if resources.memory_gb:
        options["memory"] = int(resources.memory_gb * 2**30)
    if resources.custom:
        options["resources"] = dict(resources.custom)
    if not suite.tf32:  # workers read it when they load the model (clic.device.configure_tf32)
        options["runtime_env"] = {"env_vars": {"CLIC_TF32": "0"}}
    return options


def job_slots(suite: "Suite") -> int:
    """How many of ``suite``'s jobs the connected cluster runs at once."""
    import ray

    resources = suite.resources
    slots = max(1, int(int(ray.cluster_resources().get("CPU", 1)) // max(resources.num_cpus, 1e-9)))
    if resources.num_gpus > 0:  # jobs that run at once are bounded by the GPUs too
        slots = max(1, min(slots, int(ray.cluster_resources().get("GPU", 0) // resources.num_gpus)))
    return slots


@dataclasses.dataclass
class WarmWorkers:
    """Warm-up calls, one per job slot: each imports the method library and loads the model into a worker
    process's cache before jobs arrive (a worker's first import of torch/diffusers takes seconds). Never
    awaited: jobs queue behind them; read at the end for the run's cold start."""

    refs: list[Any]

    @classmethod
    def start(cls, suite: "Suite", models: Mapping[str, ModelInfo | None], max_jobs: int | None = None) -> "WarmWorkers":
        import ray

        main_model = next((info for info in models.values() if info), None)
        if main_model is None:  # no method needs a model: a worker's first job imports what it needs
            return cls([])
        from clic.methods import method_target

        targets = sorted({method_target(spec.name) for spec in suite.methods if models.get(spec.name)})
        slots = job_slots(suite)
        count = min(slots, max_jobs or slots)
        warm_remote = ray.remote(warm_worker).options(**job_options(suite))
        return cls([warm_remote.remote(main_model, targets) for _ in range(count)])

    def cold_start_seconds(self) -> float:
        """The slowest warm-up's seconds (0 when none answered: e.g. every worker was lost)."""
        import ray

        if not self.refs:
            return 0.0
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=5)
        seconds = []
        for ref in ready:
            try:
                seconds.append(float(ray.get(ref)["seconds"]))
            except Exception:  # a warm-up that failed: its worker's first job pays the start instead
                continue
        return max(seconds, default=0.0)


class _RayRun:
    """One run on the cluster: submits what the scheduler asks for and reports what finished."""

    def __init__(self, suite: "Suite", plan: Plan, graph: JobGraph, scheduler: Scheduler, recorder: Recorder,
                 run_dir: Path, max_in_flight: int | None, allow_random_metrics: bool, quiet: bool,
                 warming: WarmWorkers | None = None, mirror: Any = None) -> None:
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
        from .packing import method_resources

        # (method, preset) -> its own num_gpus / num_cpus (harness.execute.packing): per method, packed by memory
        self.method_options = {key: {"num_gpus": entry["num_gpus"], "num_cpus": entry["num_cpus"]}
                               for key, entry in method_resources(suite, plan.resolution).items()}
        self.learn_function, self.task_function = ray.remote(learn_concept_task), ray.remote(run_task_job)
        self.learn_remote = self.learn_function.options(**options)
        self.task_remote = self.task_function.options(**options, num_returns=2)
        # Out of memory is retried with a larger packing (scheduler.larger_packing), keyed by concept or job id:
        self.retry_options: dict[str, dict[str, float]] = {}  # the resources of the next attempt
        self.out_of_memory: dict[str, list[str]] = {}  # the packings that ran out of memory, in order
        jobs_to_run = len(graph.jobs) - recorder.summary.skipped - recorder.summary.not_applicable
        self.warming = warming or WarmWorkers.start(suite, recorder.models, max(jobs_to_run, 1))
        # The metric actor holds the models once for the whole run (and the driver's next runs). Jobs start
        # while it loads them; its answer is awaited with them, and an actor that cannot start (e.g. random
        # CLIP weights refused) still stops the run at once.
        targets = {m.name: m.target for m in plan.metrics}
        count, actor_gpus = metric_pool_shape(suite.metric_actors, targets, ray.cluster_resources())
        self.scorers = metric_scorers(targets, allow_random_metrics, {k: dict(v) for k, v in suite.metric_options.items()},
                                      count, actor_gpus) if plan.metrics else []
        self.scorer_load = [0] * len(self.scorers)  # calls in flight per actor: a batch goes to the least loaded
        self.scored_by: dict[Any, int] = {}
        self.metric_pool = {"actors": len(self.scorers), "num_gpus_each": actor_gpus}
        self.weights_pending = [self.scorers[0].weights.remote()] if plan.metrics else []
        self.metric_weights: dict[str, str] = {}
        recorder.weights_of = self.weights_of
        self.concepts_root = str(run_dir / store.CONCEPTS_DIR)
        self.learned: dict[str, dict] = {}  # concept id -> the learn task's output
        self.records: dict[str, dict] = {}  # job id -> its task's small record (artifacts, timings), until written
        self.samples: dict[str, Any] = {}  # job id -> the object ref of its samples, until scored
        self.pending: dict[Any, Submission] = {}
        self.group_ids = {key: group_result_id(key, members, plan.metrics) for key, members in scheduler.groups.items()}
        self.progress = tqdm(total=len(graph.jobs) - recorder.summary.skipped - recorder.summary.not_applicable,
                             disable=quiet, unit="job", desc="jobs")
        recorder.on_record = self.show

    def show(self) -> None:
        summary = self.recorder.summary
        self.progress.update(1)
        self.progress.set_postfix(learned=f"{len(self.scheduler.learned)}/{self.scheduler.concepts_total}",
                                  done=summary.done, failed=summary.failed, skipped=summary.skipped, refresh=False)

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
            ref = self._remote(submission.concept_id, True, node.method, node.preset).remote(node, self.concepts_root,
                                                                                             self.remote)
        elif isinstance(submission, RunTask):
            job = submission.job
            node = self.graph.learns[job.concept_id]
            ref, self.samples[job.job_id] = self._remote(job.job_id, False, job.method, job.preset).remote(
                job, self.learned[job.concept_id], node.model, self.plan.resolution, str(self.run_dir), self.remote)
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
            print(f"{what} {key}: out of memory with {tried[-1]}; retry {len(tried)} of {self.max_retries} with "
                  f"{packing_text(self.retry_options[key])}", file=sys.stderr)
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
                notes.append(ran if len(tried) > self.max_retries else
                             f"{ran}; retried with {packing_text(self.retry_options[key])}")
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

    def _record_group(self, key: GroupKey, result: Mapping[str, Any] | None, error: BaseException | None = None) -> None:
        self.recorder.group(key, self.scheduler.groups[key], self.group_ids[key], group_prefix(key), result, error)


def resolved_plan(plan: Plan) -> dict[str, Any]:
    """What the plan decided, for run.json: each method run's label in suite order, its suite overrides, its class
    and its resolved settings (learning config, each transfer/generation sweep point with its variant, matching),
    and each metric's declaration (the report reads these instead of re-deriving them)."""
    return {
        "methods": [{"label": run.label, "method": run.name, "preset": run.preset, "variant": run.variant,
                     "learn": store.json_ready(run.learn), "target": run.target,
                     "resolved": store.json_ready(run.resolved.record()) if run.resolved else None}
                    for run in plan.methods],
        "metrics": [{"name": m.name, "version": m.version, "scale": m.scale, "tasks": sorted(m.tasks),
                     "group_by": m.group_by, "target": m.target} for m in plan.metrics],
        "resolution": plan.resolution,
    }


def _packing(suite: "Suite", plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    from .packing import method_resources

    return method_resources(suite, plan.resolution)


def _write_run_record(run_dir: Path, suite: "Suite", plan: Plan, summary: RunSummary, started: str,
                        models: Mapping[str, ModelInfo | None], metric_weights: Mapping[str, str], slots: int) -> None:
    try:
        previous = store.read_run_record(run_dir)
    except ValueError:  # a corrupt run.json: rewritten below
        previous = {}
    counts = {"jobs": summary.total_jobs, "done": summary.done, "skipped": summary.skipped,
              "failed": summary.failed, "failed_earlier": summary.failed_earlier, "not_applicable": summary.not_applicable,
              "learns_run": summary.learns_run, "groups_scored": summary.groups_scored,
              "groups_failed": summary.groups_failed, "infrastructure_failed": summary.infrastructure_failed}
    # Every run on this folder, oldest first: the top-level keys describe the last one.
    runs = [*previous.get("runs", []), {"run_id": summary.run_id, "started_at": started, "finished_at": now_iso(),
                                        "host": socket.gethostname(), "code_version": code_version(),
                                        "counts": counts}]
    record = {
        "runs": runs,
        "run_id": summary.run_id, "suite": suite.to_dict(), "suite_path": suite.source, "plan": resolved_plan(plan),
        "code_version": code_version(), "git": git_describe(), "versions": _versions(),
        "host": socket.gethostname(), "started_at": started, "finished_at": now_iso(),
        "models": {m: (info.__dict__ if info else None) for m, info in models.items()},
        "packing": {f"{method}/{preset}": entry for (method, preset), entry in _packing(suite, plan).items()},
        "tf32": {"enabled": suite.tf32, "applies_to": "CUDA devices of compute capability >= 8.0 (Ampere and newer); "
                 "elsewhere fp32 matmuls are exact"},
        "metric_weights": dict(metric_weights) or previous.get("metric_weights", {}),
        "counts": counts,
        "learns_total": int((previous.get("learns_total") or 0) + summary.learns_run),
        "nodes": dict(summary.node_ids),
        "learn_nodes": dict(summary.learn_node_ids),
        "timing": {"wall_seconds": summary.wall_seconds, "work_seconds": summary.work_seconds,
                   "worker_slots": slots, "overhead_share": summary.overhead_share,
                   "cold_start_seconds": summary.cold_start_seconds,
                   "warm_overhead_share": summary.warm_overhead_share,
                   "peak_in_flight": summary.peak_in_flight},
    }
    try:
        store.write_run_record(run_dir, record)
    except OSError as error:  # e.g. the disk is full: the results written so far stand
        print(f"{run_dir / store.RUN_RECORD}: not updated ({one_line(error)})", file=sys.stderr)


# -------------------------------------------------------------------------------------- entry points
def run_suite(suite_path: str | Path, out: str | Path | None = None, address: str | None = None, *,
              num_cpus: int | None = None, max_in_flight: int | None = None, retry_failed: bool = False,
              allow_random_metrics: bool = False, allow_outside: bool = False, quiet: bool = False,
              wait: bool = True, allow_other_suite: bool = False, sets: Sequence[str] = ()) -> RunSummary:
    from ..plan.preflight import preflight

    # Everything that would certainly fail later fails here, in seconds, one line per problem (exit 2).
    checked = preflight(suite_path, out, allow_random_metrics=allow_random_metrics, allow_outside=allow_outside,
                        allow_other_suite=allow_other_suite, sets=sets)
    if not address:  # a local cluster gets this machine's GPUs: refused before it is started
        from ..plan.preflight import PreflightFailed, gpu_problems, local_gpu_count

        import ray

        if not ray.is_initialized():
            problems = gpu_problems(checked.suite, local_gpu_count())
            if problems:
                raise PreflightFailed(problems)
    return execute(checked.suite, checked.pairs, checked.run_dir, address=address, num_cpus=num_cpus, max_in_flight=max_in_flight,
                   retry_failed=retry_failed, allow_random_metrics=allow_random_metrics, quiet=quiet, wait=wait,
                   remote=checked.remote)


def run_main(args: argparse.Namespace) -> int:
    summary = run_suite(args.suite, args.out, args.address, num_cpus=args.num_cpus,
                        max_in_flight=args.max_in_flight, retry_failed=args.retry_failed,
                        allow_random_metrics=args.allow_random_metrics, allow_outside=args.allow_outside,
                        quiet=args.quiet, wait=not getattr(args, "no_wait", False),
                        allow_other_suite=getattr(args, "allow_other_suite", False), sets=getattr(args, "set", None) or ())
    lines = summary_lines(summary)
    print("\n".join(lines[:-1] if summary.failed_earlier else lines))
    if not args.no_report:
        try:
            report = importlib.import_module("harness.analyse.report")
            write_report = getattr(report, "write_report")
        except (ImportError, AttributeError):
            print("report: harness.analyse.report.write_report is not available; skipped (run `clic-bench report` later)")
        else:
            report_path = write_report(summary.run_dir)
            if summary.remote:  # written in the staging folder, then pushed under the run folder's URI
                from ..remote_folder import RemoteFolder

                mirror = RemoteFolder(summary.remote, summary.run_dir)
                mirror.push_report(Path(report_path).parent)  # write_report returns its index.html
                report_path = f"{summary.remote}/{Path(report_path).relative_to(summary.run_dir).as_posix()}"
            print(f"report: {report_path}")
    if summary.failed_earlier:  # the last line: the tables lack these jobs
        print(lines[-1])
    return exit_status(summary)


def summary_lines(summary: RunSummary) -> list[str]:
    """What a finished run says; when jobs of the plan were skipped because their stored result is a failure,
    the last line says so (a rerun after a fixed configuration must not look like a clean run)."""
    lines = [f"{summary.total_jobs} jobs: {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
             f"(already finished), {summary.not_applicable} not applicable; {summary.learns_run} concepts learned; "
             f"{summary.wall_seconds:.1f} s wall, harness overhead {summary.overhead_share:.0%}"]
    if summary.infrastructure_failed:
        lines.append(f"{summary.infrastructure_failed} job(s) failed for the machine's sake (disk full, lost worker): "
                     f"they run again on the next run, without --retry-failed")
    if summary.cold_start_seconds:
        lines.append(f"cold start {summary.cold_start_seconds:.1f} s (worker imports and model load, once per worker "
                     f"process); harness overhead after it {summary.warm_overhead_share:.0%}")
    if summary.groups_scored or summary.groups_failed:
        lines.append(f"group metrics: {summary.groups_scored} groups scored, {summary.groups_failed} failed")
    lines.append(f"results: {summary.run_dir / store.RESULTS_DIR} (read with harness.store.read_results)" if not summary.remote
                 else f"results: {summary.remote}/{store.RESULTS_DIR} (staged in {summary.run_dir})")
    if summary.failed_earlier:
        lines.append(f"{summary.failed_earlier} failed earlier: their results are failures, not values; "
                     f"rerun with --retry-failed")
    return lines


def exit_status(summary: RunSummary) -> int:
    """0 when every job of the plan has a result that is not a failure, else 1."""
    return 1 if summary.failed or summary.failed_earlier else 0
