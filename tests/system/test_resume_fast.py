"""issue 25: a resume with nothing to do is answered from the stored plan's fingerprint, without planning; any
change to what the plan's ids follow from plans in full again."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from run_inputs import cut_paste_suite, make_pairs

from harness import store
from harness.execute import resume, runner
from harness.execute.runner import execute, exit_status
from harness.plan.job_graph import build_job_graph
from harness.plan.jobs import ModelInfo, Pair
from harness.plan.resolve import plan_from_suite


class GraphCalls:
    """build_job_graph, counting its calls (the fast path must make none)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return build_job_graph(*args, **kwargs)


@pytest.fixture
def graph_calls(monkeypatch: pytest.MonkeyPatch) -> GraphCalls:
    calls = GraphCalls()
    monkeypatch.setattr(runner, "build_job_graph", calls)
    return calls


def test_nothing_to_do_is_answered_without_planning_and_changes_plan_again(
    ray_session, tmp_path: Path, graph_calls: GraphCalls
) -> None:
    pairs = make_pairs(tmp_path / "data", 2, targets_per_source=2)
    run = tmp_path / "run"
    first = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert (first.done, graph_calls.calls) == (4, 1)
    stored = store.read_plan_table(run)
    assert stored is not None and stored.fingerprint and stored.table.num_rows == 4
    rows = store.read_results(run)

    again = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert graph_calls.calls == 1  # not planned
    assert (again.total_jobs, again.done, again.skipped, again.failed_earlier) == (4, 0, 4, 0)
    assert exit_status(again) == 0
    assert (
        store.read_results(run)
        .sort_values(["job_id", "metric"])
        .reset_index(drop=True)
        .equals(rows.sort_values(["job_id", "metric"]).reset_index(drop=True))
    )

    # a file touched (same bytes): planned in full, and its jobs keep their ids (ids hash the bytes)
    os.utime(pairs[0].target_image, ns=(1_000_000_000, 1_000_000_000))
    touched = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert (graph_calls.calls, touched.done, touched.skipped) == (2, 0, 4)
    execute(cut_paste_suite(), pairs, run, quiet=True)
    assert graph_calls.calls == 2  # the touched file's new stat is in the new fingerprint

    # another setting: planned in full (and it is a new job set)
    wider = execute(cut_paste_suite(seeds=[0, 1]), pairs, run, quiet=True)
    assert (graph_calls.calls, wider.done, wider.skipped) == (3, 4, 4)

    # a result removed outside the harness: not everything is in, so it is planned and the job runs again
    job_id = store.read_results(run)["job_id"].iloc[0]
    store.remove_job_results(run, {job_id: "test"})
    redone = execute(cut_paste_suite(seeds=[0, 1]), pairs, run, quiet=True)
    assert (graph_calls.calls, redone.done, redone.skipped) == (4, 1, 7)


def test_failed_jobs_keep_their_verdict_on_the_fast_path(ray_session, tmp_path: Path, graph_calls: GraphCalls) -> None:
    from PIL import Image

    pairs = make_pairs(tmp_path / "data", 3)
    Image.new("L", (64, 64), 0).save(tmp_path / "data" / "empty.png")  # cut_paste fails on an empty mask
    pairs[1] = dataclasses.replace(pairs[1], pair_id="broken", target_mask=str(tmp_path / "data" / "empty.png"))
    run = tmp_path / "run"
    first = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert (first.done, first.failed) == (2, 1)
    again = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert graph_calls.calls == 1
    assert (again.skipped, again.failed_earlier, exit_status(again)) == (3, 1, 1)
    retried = execute(cut_paste_suite(), pairs, run, quiet=True, retry_failed=True)  # --retry-failed plans
    assert (graph_calls.calls, retried.failed) == (2, 1)


def test_a_machine_failure_is_not_finished(ray_session, tmp_path: Path, graph_calls: GraphCalls) -> None:
    pairs = make_pairs(tmp_path / "data", 2)
    run = tmp_path / "run"
    execute(cut_paste_suite(), pairs, run, quiet=True)
    results = store.read_results(run)
    job_id = results["job_id"].iloc[0]
    lost = results[results["job_id"] == job_id].assign(
        status=store.STATUS_FAILED,
        value=None,
        error=f"{runner.run_folder.INFRASTRUCTURE_PREFIX}WorkerCrashedError: the worker died",
    )
    store.remove_job_results(run, {job_id: "test"})
    store.write_job_results(run, job_id, lost.astype(object).where(lost.notna(), None).to_dict("records"))
    again = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert (graph_calls.calls, again.done, again.skipped) == (2, 1, 1)


def _fingerprint(suite, pairs: list[Pair]) -> str | None:
    models = {"cut_paste": ModelInfo("tiny", "abc", "tiny-random")}
    return resume.plan_fingerprint(suite.to_dict(), plan_from_suite(suite, 64), models, pairs)


def test_fingerprint_follows_every_input_and_gives_up_on_uris(tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "data", 2)
    base = _fingerprint(cut_paste_suite(), pairs)
    assert base == _fingerprint(cut_paste_suite(), list(pairs))
    assert base != _fingerprint(cut_paste_suite(seeds=[1]), pairs)
    assert base != _fingerprint(cut_paste_suite(), [dataclasses.replace(pairs[0], category="jewelry"), pairs[1]])
    assert base != _fingerprint(cut_paste_suite(), pairs[:1])
    Path(pairs[0].source_image).write_bytes(Path(pairs[1].target_image).read_bytes())  # same path, new bytes
    assert base != _fingerprint(cut_paste_suite(), pairs)
    remote = dataclasses.replace(pairs[0], target_image="s3://bucket/target.png")
    assert _fingerprint(cut_paste_suite(), [remote, pairs[1]]) is None
