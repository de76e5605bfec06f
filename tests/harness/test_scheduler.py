"""The scheduling policy without Ray: learn first, bounded in flight, batches split on refusal, groups scored
when complete, resume skips what is finished. The scheduler is driven by hand, as the Ray adapter drives it."""

from __future__ import annotations

from collections import deque

import pytest

from harness import store
from harness.execute.scheduler import Learn, RunTask, Scheduler, Score, ScoreGroup, jobs_to_run
from harness.plan.jobs import TaskJob


def job(job_id: str, concept: str) -> TaskJob:
    return TaskJob(
        job_id=job_id,
        task="transfer",
        concept_id=concept,
        pair_id=job_id,
        category="c",
        method="m",
        preset="p",
        seed=0,
        method_target="m:M",
        label="m/p",
        variant="",
        settings={},
        object_word="chair",
        metrics=("x",),
    )


def jobs(concepts: int, per_concept: int) -> list[TaskJob]:
    return [job(f"c{c}-j{j}", f"c{c}") for c in range(concepts) for j in range(per_concept)]


def run_to_end(scheduler: Scheduler, fail: set[str] = frozenset()) -> list:
    """Finish submissions first in, first out (``fail``: concept ids, job ids or "score:<job id>" that fail);
    checks the bounds after every step and returns every submission in order."""
    order, pending = [], deque()
    while True:
        new = scheduler.next_submissions()
        order += new
        pending.extend(new)
        assert len(scheduler.learning) + len(scheduler.running) <= scheduler.max_in_flight
        if not pending:
            return order
        item = pending.popleft()
        key = (
            item.concept_id
            if isinstance(item, Learn)
            else item.job.job_id
            if isinstance(item, RunTask)
            else "score:" + item.jobs[0].job_id
            if isinstance(item, Score) and len(item.jobs) == 1
            else None
        )
        scheduler.on_finished(item, ok=key not in fail)


def test_every_learn_is_submitted_before_any_task_job() -> None:
    scheduler = Scheduler(jobs(3, 2), max_in_flight=8)
    first = scheduler.next_submissions()
    assert first == [Learn("c0"), Learn("c1"), Learn("c2")]  # nothing else is ready
    scheduler.on_finished(Learn("c1"), ok=True)
    assert [s.job.job_id for s in scheduler.next_submissions()] == ["c1-j0", "c1-j1"]
    order = run_to_end(Scheduler(jobs(4, 3), max_in_flight=2))
    kinds = [type(s).__name__ for s in order]
    assert kinds.index("RunTask") > max(i for i, kind in enumerate(kinds) if kind == "Learn")


def test_in_flight_is_bounded_and_waiting_scores_hold_back_new_jobs() -> None:
    scheduler = Scheduler(jobs(1, 6), max_in_flight=3)
    assert scheduler.next_submissions() == [Learn("c0")]
    scheduler.on_finished(Learn("c0"), ok=True)
    started = scheduler.next_submissions()
    assert len(started) == 3 and scheduler.peak_running == 3
    for submission in started:
        scheduler.on_finished(submission, ok=True)  # three outputs now wait for the metric actor
    batch = scheduler.next_submissions()
    assert batch == [Score(tuple(s.job for s in started))]  # one batch, and no new task job while it waits
    scheduler.on_finished(batch[0], ok=True)
    assert len(scheduler.next_submissions()) == 3
    order = run_to_end(Scheduler(jobs(5, 4), max_in_flight=2))
    assert sum(isinstance(s, RunTask) for s in order) == 20


def test_a_failed_learn_fails_its_jobs_and_a_refused_batch_is_split() -> None:
    scheduler = Scheduler(jobs(2, 2), max_in_flight=4)
    scheduler.next_submissions()
    assert [j.job_id for j in scheduler.on_finished(Learn("c0"), ok=False)] == ["c0-j0", "c0-j1"]
    scheduler.on_finished(Learn("c1"), ok=True)
    tasks = scheduler.next_submissions()
    for submission in tasks:
        scheduler.on_finished(submission, ok=True)
    (batch,) = scheduler.next_submissions()
    assert scheduler.on_finished(batch, ok=False) == []  # which sample was refused? score them one by one
    singles = scheduler.next_submissions()
    assert singles == [Score((tasks[0].job,)), Score((tasks[1].job,))]
    assert scheduler.on_finished(singles[0], ok=False) == [tasks[0].job]
    assert scheduler.on_finished(singles[1], ok=True) == [tasks[1].job]
    assert scheduler.ok_jobs == {"c1-j1"} and not scheduler.busy


def test_a_group_is_scored_once_when_every_member_is_ok() -> None:
    members = jobs(2, 1)
    scheduler = Scheduler(members, max_in_flight=4, groups={("seeds", "g"): members})
    order = run_to_end(scheduler)
    groups = [i for i, s in enumerate(order) if isinstance(s, ScoreGroup)]
    assert len(groups) == 1 and order[groups[0]] == ScoreGroup(("seeds", "g"), tuple(members))
    last_score = max(i for i, s in enumerate(order) if isinstance(s, Score))
    assert groups[0] > last_score  # after both members' values
    failing = Scheduler(jobs(2, 1), max_in_flight=4, groups={("seeds", "g"): jobs(2, 1)})
    assert not any(isinstance(s, ScoreGroup) for s in run_to_end(failing, fail={"c1-j0"}))


def test_resume_runs_only_unfinished_jobs_and_scores_groups_completed_earlier() -> None:
    graph = jobs(2, 2)
    statuses = {"c0-j0": store.STATUS_OK, "c0-j1": store.STATUS_FAILED, "c1-j0": store.STATUS_NOT_APPLICABLE}
    assert [j.job_id for j in jobs_to_run(graph, statuses)] == ["c1-j1"]
    assert [j.job_id for j in jobs_to_run(graph, statuses, retry_failed=True)] == ["c0-j1", "c1-j1"]
    # Members finished in an earlier run: the group is scored at once, and no concept is learned for it.
    earlier = Scheduler([], max_in_flight=2, groups={("seeds", "g"): graph[:1]}, ok_jobs=["c0-j0"])
    assert earlier.next_submissions() == [ScoreGroup(("seeds", "g"), (graph[0],))]
    assert earlier.next_submissions() == []


def test_no_metric_means_a_finished_task_is_done() -> None:
    scheduler = Scheduler(jobs(1, 1), max_in_flight=1, scores_jobs=False)
    order = run_to_end(scheduler)
    assert [type(s) for s in order] == [Learn, RunTask] and scheduler.ok_jobs == {"c0-j0"}
    with pytest.raises(ValueError, match="max_in_flight"):
        Scheduler([], max_in_flight=0)
