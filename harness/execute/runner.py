"""Run a suite on Ray: the thin adapter between the scheduling policy and the cluster.

:class:`~harness.execute.scheduler.Scheduler` decides what to submit (learn first, bounded in flight, groups
when complete); this module turns each submission into a Ray call, waits for calls to finish and reports them
back; :class:`~harness.execute.records.Recorder` writes each job's rows as soon as they are known, so a killed
driver loses only in-flight jobs and a rerun skips everything already written. Task outputs (images) go from
the workers to the metric actor as object refs; the driver only sees small records. The cluster connection and
job options live in :mod:`harness.execute.cluster`, the Ray calls of one run in :mod:`harness.execute.ray_run`,
the run record in :mod:`harness.execute.run_record`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import store
from ..plan import file_facts
from ..plan.job_graph import build_job_graph
from ..plan.jobs import JobGraph, ModelInfo, Pair, Plan, code_version, group_members, group_result_id
from ..plan.resolve import describe_models, load_pairs, method_tasks, plan_from_suite  # noqa: F401 - re-exported
from . import resume, run_folder
from .cluster import (  # noqa: F401
    STARTED_LOCAL_CLUSTER,
    WarmWorkers,
    check_cluster,
    connect,
    job_options,
    job_slots,
    stop_started_cluster,
)
from .ray_run import RayRun
from .records import NO_MODEL_LABEL, Recorder, RunSummary, mean_values, now_iso, one_line  # noqa: F401 - re-exported
from .run_record import VERSIONED, record_run, resolved_plan  # noqa: F401 - re-exported
from .scheduler import Scheduler, jobs_to_run
from .scorer import METRIC_ACTOR_PREFIX, metric_scorer  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from ..plan.suite_model import Suite


def execute(
    suite: Suite,
    pairs: Sequence[Pair],
    run_dir: str | Path,
    *,
    wait: bool = True,
    remote: str | None = None,
    **options: Any,
) -> RunSummary:
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


def _execute_remote(
    suite: Suite, pairs: Sequence[Pair], run_dir: str | Path, remote: str, *, run_id: str, wait: bool, **options: Any
) -> RunSummary:
    """:func:`execute` into a run folder on object storage: the remote lease, then the staging folder's own lock
    (two runs of one machine), pull, run, push (also when the run stops on an error: what it recorded stands)."""
    from ..remote_folder import RemoteFolder

    folder = RemoteFolder(remote, Path(run_dir).resolve())
    with (
        folder.leased(run_id, wait=wait, quiet=bool(options.get("quiet"))),
        run_folder.locked(folder.local, run_id, wait=wait, quiet=True),
    ):
        folder.pull()
        try:
            summary = _execute_locked(suite, pairs, folder.local, run_id=run_id, mirror=folder, **options)
        finally:
            folder.push()
    summary.remote = folder.uri
    return summary


def _execute_locked(
    suite: Suite,
    pairs: Sequence[Pair],
    run_dir: str | Path,
    *,
    run_id: str,
    address: str | None = None,
    num_cpus: int | None = None,
    max_in_flight: int | None = None,
    retry_failed: bool = False,
    allow_random_metrics: bool = False,
    quiet: bool = False,
    mirror: Any = None,
) -> RunSummary:
    run_dir = Path(run_dir).resolve()
    _tidy_folder(run_dir, quiet)
    started, start_clock = now_iso(), time.perf_counter()
    models, native_resolution = describe_models(suite)
    warming: WarmWorkers | None = None
    if not store.has_results(run_dir):
        # A fresh run folder certainly has jobs to run: the workers import the method library and load the
        # model (seconds each) while the driver plans. A resumed run plans first: it may have nothing to run.
        connect(address, num_cpus)
        check_cluster(suite)
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
        return _finish_without_jobs(suite, plan, summary, started, start_clock, models)
    graph: JobGraph = build_job_graph(pairs, plan, models, method_tasks(plan))
    summary = RunSummary(run_dir=run_dir, run_id=run_id, total_jobs=len(graph.jobs))
    scheduler, recorder = _schedule(
        run_dir, graph, plan, models, pairs, summary, fingerprint, retry_failed, max_in_flight
    )
    if scheduler is None:  # nothing to run: no cluster, no models
        return _finish_without_jobs(suite, plan, summary, started, start_clock, models)

    connect(address, num_cpus)
    check_cluster(suite)
    run = RayRun(
        suite, plan, graph, scheduler, recorder, run_dir, max_in_flight, allow_random_metrics, quiet, warming, mirror
    )
    run.loop()
    summary.learns_run = sum(bool(output.get("learned")) for output in run.learned.values())
    summary.peak_in_flight = scheduler.peak_running
    run.settle_weights()
    # Thousands of small per-job files read slowly (and very slowly on a shared file system): the finished run's
    # journal becomes a few row-group-sized files (below COMPACT_MIN_FILES files it stays as it is).
    store.compact_results(run_dir)
    summary.wall_seconds = time.perf_counter() - start_clock
    _measure_overhead(summary, run.slots, run.warming.cold_start_seconds())
    record_run(run_dir, suite, plan, summary, started, models, run.metric_weights, run.slots)
    return summary


def _tidy_folder(run_dir: Path, quiet: bool) -> None:
    """Create the run folder, remove what a killed run half-wrote, and say what an earlier run left unreadable."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = store.remove_stale_temps(run_dir)
    if stale and not quiet:
        print(f"{run_dir}: removed {stale} half-written file(s) left by an earlier, killed run", file=sys.stderr)
    for line in run_folder.audit(run_dir):  # unreadable results, missing artifacts: redone, one line each
        print(line, file=sys.stderr)


def _schedule(
    run_dir: Path,
    graph: JobGraph,
    plan: Plan,
    models: dict[str, ModelInfo | None],
    pairs: Sequence[Pair],
    summary: RunSummary,
    fingerprint: str | None,
    retry_failed: bool,
    max_in_flight: int | None,
) -> tuple[Scheduler | None, Recorder]:
    """Record the plan and its pairs in the run folder, count what earlier runs finished, and schedule the rest;
    the scheduler is None when nothing is left to run (not-applicable jobs are recorded here)."""
    file_facts.save(run_dir)  # the files' checks and digests, for the next run on this folder
    weights = {name: info.weights_hash if info else None for name, info in models.items()}
    for line in run_folder.remove_superseded(run_dir, graph.jobs, weights, code_version()):  # edited manifest rows
        print(line, file=sys.stderr)
    store.write_pairs(run_dir, [{f.name: getattr(pair, f.name) for f in dataclasses.fields(Pair)} for pair in pairs])

    # A job whose recorded failure was the machine's (disk full, lost worker) is not finished: it runs again.
    machine_failures = run_folder.infrastructure_failures(run_dir)
    statuses = {
        job_id: status for job_id, status in store.job_statuses(run_dir).items() if job_id not in machine_failures
    }
    finished = {job_id for job_id, status in statuses.items() if not retry_failed or status != store.STATUS_FAILED}
    todo = jobs_to_run(graph.jobs, statuses, retry_failed)
    summary.skipped = len(graph.jobs) - len(todo)
    summary.failed_earlier = (
        sum(statuses.get(job.job_id) == store.STATUS_FAILED for job in graph.jobs) if not retry_failed else 0
    )
    recorder = Recorder(run_dir, summary, models, plan.metrics)
    for job in [j for j in todo if j.status == store.STATUS_NOT_APPLICABLE]:
        recorder.not_applicable(job)
    todo = [job for job in todo if job.status != store.STATUS_NOT_APPLICABLE]
    # Group metrics score sets of jobs (harness.plan.jobs.GROUP_KINDS) once every member has an ok result, in
    # this run or an earlier one: the metric actor reads the members' images back from their artifacts.
    planned_groups = {
        key: group_result_id(key, members, plan.metrics) for key, members in group_members(graph, plan.metrics).items()
    }
    # The result ids of this plan: tables read these rows, and rows of earlier plans of the folder are left out.
    store.write_plan(run_dir, (job.job_id for job in graph.jobs), planned_groups.values(), fingerprint)
    groups = {
        key: members
        for key, members in group_members(graph, plan.metrics).items()
        if planned_groups[key] not in finished
    }
    scheduler = Scheduler(
        todo,
        max_in_flight or 1,
        groups,
        ok_jobs=[job_id for job_id, status in statuses.items() if status == store.STATUS_OK],
        scores_jobs=any(not metric.group_by for metric in plan.metrics),
    )
    if not todo and not any(map(scheduler.group_complete, groups)):
        return None, recorder
    return scheduler, recorder


def _finish_without_jobs(
    suite: Suite, plan: Plan, summary: RunSummary, started: str, start_clock: float, models: dict[str, ModelInfo | None]
) -> RunSummary:
    """A run with nothing to run: no cluster, no models; the run record still says it happened."""
    store.compact_results(summary.run_dir)  # an earlier run killed before its compaction
    summary.wall_seconds = time.perf_counter() - start_clock
    record_run(summary.run_dir, suite, plan, summary, started, models, {}, slots=0)
    return summary


def _measure_overhead(summary: RunSummary, slots: int, cold_start_seconds: float) -> None:
    """The share of the wall time that was not the methods' work, with and without the workers' cold start."""
    method_time = summary.work_seconds / slots
    summary.overhead_share = (
        max(0.0, (summary.wall_seconds - method_time) / summary.wall_seconds)
        if summary.wall_seconds > 0 and summary.jobs_run
        else 0.0
    )
    summary.cold_start_seconds = cold_start_seconds
    warm_wall = summary.wall_seconds - summary.cold_start_seconds
    summary.warm_overhead_share = (
        max(0.0, (warm_wall - method_time) / warm_wall) if warm_wall > 0 and summary.jobs_run else 0.0
    )


# -------------------------------------------------------------------------------------- entry points
def run_suite(
    suite_path: str | Path,
    out: str | Path | None = None,
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    max_in_flight: int | None = None,
    retry_failed: bool = False,
    allow_random_metrics: bool = False,
    allow_outside: bool = False,
    quiet: bool = False,
    wait: bool = True,
    allow_other_suite: bool = False,
    sets: Sequence[str] = (),
) -> RunSummary:
    from ..plan.preflight import preflight

    # Everything that would certainly fail later fails here, in seconds, one line per problem (exit 2).
    checked = preflight(
        suite_path,
        out,
        allow_random_metrics=allow_random_metrics,
        allow_outside=allow_outside,
        allow_other_suite=allow_other_suite,
        sets=sets,
    )
    if not address:  # a local cluster gets this machine's GPUs: refused before it is started
        import ray

        from ..plan.preflight import PreflightFailed, gpu_problems, local_gpu_count

        if not ray.is_initialized():
            problems = gpu_problems(checked.suite, local_gpu_count())
            if problems:
                raise PreflightFailed(problems)
    return execute(
        checked.suite,
        checked.pairs,
        checked.run_dir,
        address=address,
        num_cpus=num_cpus,
        max_in_flight=max_in_flight,
        retry_failed=retry_failed,
        allow_random_metrics=allow_random_metrics,
        quiet=quiet,
        wait=wait,
        remote=checked.remote,
    )


def run_main(args: argparse.Namespace) -> int:
    summary = run_suite(
        args.suite,
        args.out,
        args.address,
        num_cpus=args.num_cpus,
        max_in_flight=args.max_in_flight,
        retry_failed=args.retry_failed,
        allow_random_metrics=args.allow_random_metrics,
        allow_outside=args.allow_outside,
        quiet=args.quiet,
        wait=not getattr(args, "no_wait", False),
        allow_other_suite=getattr(args, "allow_other_suite", False),
        sets=getattr(args, "set", None) or (),
    )
    lines = summary_lines(summary)
    print("\n".join(lines[:-1] if summary.failed_earlier else lines))
    if not args.no_report:
        try:
            report = importlib.import_module("harness.analyse.report")
            write_report = report.write_report
        except (ImportError, AttributeError):
            print(
                "report: harness.analyse.report.write_report is not available; skipped (run `clic-bench report` later)"
            )
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
    lines = [
        f"{summary.total_jobs} jobs: {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
        f"(already finished), {summary.not_applicable} not applicable; {summary.learns_run} concepts learned; "
        f"{summary.wall_seconds:.1f} s wall, harness overhead {summary.overhead_share:.0%}"
    ]
    if summary.infrastructure_failed:
        lines.append(
            f"{summary.infrastructure_failed} job(s) failed for the machine's sake (disk full, lost worker): "
            f"they run again on the next run, without --retry-failed"
        )
    if summary.cold_start_seconds:
        lines.append(
            f"cold start {summary.cold_start_seconds:.1f} s (worker imports and model load, once per worker "
            f"process); harness overhead after it {summary.warm_overhead_share:.0%}"
        )
    if summary.groups_scored or summary.groups_failed:
        lines.append(f"group metrics: {summary.groups_scored} groups scored, {summary.groups_failed} failed")
    lines.append(
        f"results: {summary.run_dir / store.RESULTS_DIR} (read with harness.store.read_results)"
        if not summary.remote
        else f"results: {summary.remote}/{store.RESULTS_DIR} (staged in {summary.run_dir})"
    )
    if summary.failed_earlier:
        lines.append(
            f"{summary.failed_earlier} failed earlier: their results are failures, not values; "
            f"rerun with --retry-failed"
        )
    return lines


def exit_status(summary: RunSummary) -> int:
    """0 when every job of the plan has a result that is not a failure, else 1."""
    return 1 if summary.failed or summary.failed_earlier else 0
