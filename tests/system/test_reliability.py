"""Faults: killed workers, a killed metric actor, a lost node, a killed driver, failing jobs, load.

Every test checks the same invariant: each job of the suite ends with exactly one result file (nothing
lost, nothing run twice), and what a result row points to is complete. Timings and memory are printed,
not asserted (the machine is shared). The test-only method ``fault_injection``
(tests/fault_injection.py, registered by tests/plugins.py) kills its own worker once, or fails deterministically.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import last_json_line
from PIL import Image, ImageDraw
from run_inputs import SIZE, cut_paste_suite, make_pairs, make_suite

from harness import store
from harness.execute.runner import execute
from harness.plan.manifest import write_manifest

ROOT = Path(__file__).resolve().parents[2]
CLIC_BENCH = str(Path(sys.executable).with_name("clic-bench"))


def fault_suite(presets: list[str], **changes) -> object:
    suite = {
        "name": "faults",
        "model": "tiny",
        "methods": [{"name": "fault_injection", "presets": presets, "learn": {"steps": 4}}],
        "seeds": [0],
        "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
        "metrics": ["ssim_psnr"],
        "resources": {"num_cpus": 1, "max_retries": 2},
    }
    suite.update(changes)
    return make_suite(suite)


def result_files(run: Path) -> list[Path]:
    return [p for p in store.results_dir(run).glob("*.parquet") if not p.name.startswith(store.TEMP_PREFIX)]


def assert_each_job_once(run: Path, expected: int) -> None:
    results = store.read_results(run)
    per_job = results.drop_duplicates(["job_id", "run_id"]).groupby("job_id").size()
    assert results["job_id"].nunique() == expected
    assert (per_job == 1).all(), per_job[per_job > 1]
    # On disk too, each job's rows are in one file: its own, or (a finished run of 64+ jobs) a compacted one.
    files_per_job: dict[str, int] = {}
    for path in result_files(run):
        for job_id in set(pq.read_table(path, columns=["job_id"]).column("job_id").to_pylist()):
            files_per_job[job_id] = files_per_job.get(job_id, 0) + 1
    assert len(files_per_job) == expected and set(files_per_job.values()) == {1}


def attempts(run: Path) -> list[int]:
    """Learning attempts per concept, as logged by the fault_injection method."""
    logs = (run / store.CONCEPTS_DIR).glob(".fault-attempts-*")
    return sorted(len(path.read_text().split()) for path in logs)


# ------------------------------------------------------------------------------------ worker death
def test_killed_workers_are_retried_and_each_job_finishes_once(ray_session, tmp_path: Path) -> None:
    """A worker SIGKILLed mid-learning (step 2 of 4) and one SIGKILLed in a transfer: Ray reruns both
    (system failures, max_retries), the run completes, one result per job."""
    pairs = make_pairs(tmp_path / "data", 2, targets_per_source=2)
    run = tmp_path / "run"
    summary = execute(fault_suite(["kill-once-in-learn", "kill-once-in-transfer"]), pairs, run, quiet=True)
    results = store.read_results(run)
    assert (summary.done, summary.failed) == (8, 0), results["error"].dropna().tolist()
    assert set(results["status"]) == {"ok"} and {"ssim_outside", "psnr_outside"} <= set(results["metric"])
    assert_each_job_once(run, 8)
    concepts = run / store.CONCEPTS_DIR
    # Two sources x two presets = 4 concepts; the 2 of kill-once-in-learn died once each and were retried.
    assert len(list(concepts.glob(".fault-learn-*"))) == 2
    assert attempts(run) == [1, 1, 2, 2]
    assert len(list(concepts.glob(".fault-transfer-*"))) == 4  # kill-once-in-transfer: each of its 4 jobs died once
    print(f"\nworker death: expected 8 results, got {len(result_files(run))}; learning attempts {attempts(run)}")


def test_a_worker_killed_more_often_than_max_retries_is_a_failed_job(ray_session, tmp_path: Path) -> None:
    """With max_retries 0 the kill is final: the job is recorded failed (one line), the others finish."""
    pairs = make_pairs(tmp_path / "data", 2)
    run = tmp_path / "run"
    suite = fault_suite(["kill-once-in-learn"], resources={"num_cpus": 1, "max_retries": 0})
    summary = execute(suite, pairs, run, quiet=True)
    results = store.read_results(run)
    assert (summary.done, summary.failed) == (0, 2)
    assert all("\n" not in e and e for e in results["error"]), results["error"].tolist()
    again = execute(suite, pairs, run, quiet=True, retry_failed=True)  # the markers exist: now it lives
    assert (again.done, again.failed, again.skipped) == (2, 0, 0)
    assert_each_job_once(run, 2)


# ----------------------------------------------------------------------------- metric actor death
def test_killed_metric_actor_restarts_and_its_calls_are_retried(ray_session, tmp_path: Path) -> None:
    """The metric actor is SIGKILLed inside its first scoring call (the test-only metric ``kill_actor_once``
    kills its own process once, at a fixed point rather than after a race with a watcher thread): Ray restarts
    it (max_restarts=-1) and retries the call (max_task_retries=-1); every job still gets its metric rows."""
    pairs = make_pairs(tmp_path / "data", 6, targets_per_source=5)
    run = tmp_path / "run"
    marker = tmp_path / "metric-actor-killed"
    suite = cut_paste_suite(
        resources={"num_cpus": 1, "max_retries": 2},
        metrics=["kill_actor_once", "ssim_psnr"],
        metric_options={"kill_actor_once": {"marker": str(marker)}},
    )
    summary = execute(suite, pairs, run, quiet=True)
    assert marker.is_file(), "the metric actor was never killed"
    results = store.read_results(run)
    assert (summary.done, summary.failed) == (30, 0), results["error"].dropna().tolist()
    assert_each_job_once(run, 30)
    per_job_metrics = results.groupby("job_id")["metric"].apply(set)
    assert all(m == {"ssim_outside", "psnr_outside"} for m in per_job_metrics), "a job lost its metric rows"


# ------------------------------------------------------------------------------ deterministic failure
def test_deterministic_failures_are_recorded_once_reported_and_retried_on_request(ray_session, tmp_path: Path) -> None:
    """A job's own error is its verdict. (Out of memory is the machine's: retried, tests/system/test_gpu_cluster.py.)"""
    from harness.analyse.report import failure_list, write_report

    pairs = make_pairs(tmp_path / "data", 2)
    run = tmp_path / "run"
    suite = make_suite(
        {
            "name": "failing",
            "model": "tiny",
            "seeds": [0],
            "methods": [
                {"name": "cut_paste"},
                {"name": "fault_injection", "presets": ["nan-loss"], "learn": {"steps": 4}},
            ],
            "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
            "metrics": ["ssim_psnr"],
            "resources": {"num_cpus": 1, "max_retries": 3},
        }
    )
    summary = execute(suite, pairs, run, quiet=True)
    assert (summary.done, summary.failed) == (2, 2)
    assert attempts(run) == [1, 1]  # an exception is not retried, even with max_retries 3
    assert_each_job_once(run, 4)
    failures = failure_list(store.read_results(run))
    assert len(failures) == 2 and set(failures["method"]) == {"fault_injection"}
    errors = list(failures["error"])
    assert all(e.endswith("loss is nan at step 1 (injected by fault_injection)") for e in errors), errors
    assert all("\n" not in e for e in errors)
    page = write_report(run).read_text()
    assert "Failed jobs (2)" in page and "loss is nan at step 1" in page

    again = execute(suite, pairs, run, quiet=True)  # a plain rerun does not touch failed jobs
    assert (again.jobs_run, again.skipped) == (0, 4)
    retry = execute(suite, pairs, run, quiet=True, retry_failed=True)  # --retry-failed: only those
    assert (retry.jobs_run, retry.failed, retry.skipped) == (2, 2, 2)
    assert attempts(run) == [2, 2]
    assert_each_job_once(run, 4)


# ----------------------------------------------------------------------------------- node loss
NODE_LOSS_SCRIPT = textwrap.dedent("""
    import json, os, sys, threading, time
    os.environ["RAY_AUTH_MODE"] = "disabled"
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import ray
    from ray.cluster_utils import Cluster
    from pathlib import Path
    from run_inputs import make_pairs, cut_paste_suite
    from harness.execute.runner import execute

    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    tmp = Path({tmp!r})
    # "slow" jobs (0.5 s sleep each) on 1-CPU nodes: jobs that overlap must run on different nodes, so the
    # node to be lost is surely doing jobs when it goes. A first run warms a worker on each node.
    suite = cut_paste_suite(resources={{"num_cpus": 1, "max_retries": 3}},
                            methods=[{{"name": "fault_injection", "presets": ["slow"]}}])
    execute(suite, make_pairs(tmp / "warm-data", 2), tmp / "warm-run", quiet=True)
    results = tmp / "run" / "results"
    removed = {{}}

    def remove_worker_node():
        while len(list(results.glob("*.parquet"))) < 20:
            time.sleep(0.05)
        removed["after_results"] = len(list(results.glob("*.parquet")))
        cluster.remove_node(worker)

    threading.Thread(target=remove_worker_node, daemon=True).start()
    summary = execute(suite, make_pairs(tmp / "data", 8, targets_per_source=5), tmp / "run", quiet=True)
    print(json.dumps({{"done": summary.done, "failed": summary.failed, "nodes": dict(summary.node_ids),
                      "removed_after": removed.get("after_results"), "lost_node": worker.node_id}}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow
def test_node_lost_mid_run_the_other_node_finishes_every_job(tmp_path: Path) -> None:
    script = NODE_LOSS_SCRIPT.format(root=str(ROOT), tests=str(Path(__file__).resolve().parents[1]), tmp=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = last_json_line(result.stdout)
    assert report["removed_after"] is not None and report["removed_after"] < 40, report
    assert (report["done"], report["failed"]) == (40, 0), report
    assert report["nodes"].get(report["lost_node"], 0) > 0, report  # the lost node had been doing jobs
    assert_each_job_once(tmp_path / "run", 40)
    print(
        f"\nnode loss: worker node removed after {report['removed_after']} results; expected 40 results, "
        f"got {len(result_files(tmp_path / 'run'))}; jobs per node {report['nodes']} (lost: {report['lost_node'][:8]})"
    )


# ------------------------------------------------------------------------ driver death and resume
def write_drawn_manifest(folder: Path, count: int) -> Path:
    """``count`` PIL-drawn pairs under ``folder`` and their manifest (paths relative to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        names = {}
        for role, colour, box in (
            ("source", (40 * i % 255, 80, 160), (8 + i % 8, 10, 40, 44)),
            ("target", (90, 30 * i % 255, 30), (20, 16 + i % 10, 52, 50)),
        ):
            image = Image.new("RGB", (SIZE, SIZE), (200, 200, 200))
            ImageDraw.Draw(image).rectangle(box, fill=colour)
            mask = Image.new("L", (SIZE, SIZE), 0)
            ImageDraw.Draw(mask).rectangle(box, fill=255)
            image.save(folder / f"{role}{i}.png")
            mask.save(folder / f"{role}{i}_mask.png")
            names[role] = f"{role}{i}.png"
        rows.append(
            {
                "pair_id": f"p{i}",
                "category": "furniture",
                "source_image": names["source"],
                "source_mask": f"source{i}_mask.png",
                "source_object": "chair",
                "target_image": names["target"],
                "target_mask": f"target{i}_mask.png",
                "target_object": "chair",
                "target_mask_gt": f"target{i}_mask.png",
                "expected_image": names["target"],
                "tags": [],
            }
        )
    return write_manifest(rows, folder / "manifest.parquet")


def write_suite_file(path: Path, manifest: Path, seeds: list[int], metrics: list[str]) -> Path:
    """A cut-and-paste suite: it reads no transfer settings (a t_start sweep is the same jobs), so seeds multiply jobs."""
    path.write_text(
        json.dumps(
            {  # JSON is YAML
                "name": path.stem,
                "model": "tiny",
                "manifest": str(manifest),
                "methods": [{"name": "cut_paste"}],
                "seeds": seeds,
                "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
                "metrics": metrics,
                "resources": {"num_cpus": 1, "max_retries": 2},
            }
        )
    )
    return path


def bench_command(suite: Path, run: Path, *extra: str) -> list[str]:
    return [CLIC_BENCH, "run", str(suite), "--out", str(run), "--num-cpus", "2", "--quiet", "--no-report", *extra]


def wait_for_results(run: Path, count: int, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(result_files(run)) < count:
        assert process.poll() is None, f"the driver ended early: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting for results"
        time.sleep(0.05)


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the driver, then whatever else of the session it started (its local Ray cluster)."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def assert_artifacts_complete(run: Path) -> int:
    """Every artifact a result row names exists and decodes to its end; the number checked."""
    results = store.read_results(run)
    checked = 0
    for column in ("artifact_image", "artifact_attention", "artifact_mask"):
        for relative in results[column].dropna().unique():
            with Image.open(run / relative) as image:
                image.load()  # raises on a truncated file
            checked += 1
    return checked


@pytest.mark.slow
def test_driver_killed_half_way_then_rerun_runs_only_the_missing_jobs(tmp_path: Path) -> None:
    manifest = write_drawn_manifest(tmp_path / "data", 50)
    suite = write_suite_file(tmp_path / "resume.yaml", manifest, [0, 1, 2, 3], ["ssim_psnr"])  # 200 jobs
    run = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(
        bench_command(suite, run),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_results(run, 100, driver)
    finally:
        kill_session(driver)
    finished_before = len(result_files(run))
    assert 100 <= finished_before < 200, finished_before
    # What a crash outside our atomic writes could leave: a half temp file, and a truncated result file.
    results_folder = store.results_dir(run)
    (results_folder / f"{store.TEMP_PREFIX}half.parquet").write_bytes(b"PAR1 half a file")
    truncated = sorted(result_files(run))[0]
    truncated.write_bytes(truncated.read_bytes()[:40])
    start = time.perf_counter()
    rerun = subprocess.run(bench_command(suite, run), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    resume_seconds = time.perf_counter() - start
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = re.search(r"(\d+) jobs: (\d+) done, (\d+) failed, (\d+) skipped", rerun.stdout)
    assert counts, rerun.stdout
    total, done, failed, skipped = map(int, counts.groups())
    assert (total, failed) == (200, 0)
    assert skipped == finished_before - 1 and done == 200 - skipped  # the truncated one ran again
    assert_each_job_once(run, 200)
    checked = assert_artifacts_complete(run)
    assert checked == 600  # edited, attention and mask of every job
    print(
        f"\ndriver death: killed after {finished_before}/200 results; rerun ran {done}, skipped {skipped}, "
        f"in {resume_seconds:.1f} s (incl. starting Ray); expected 200 results, got {len(result_files(run))}"
    )


# ------------------------------------------------------------------------------------------ load
LOAD_DRIVER = textwrap.dedent("""
    import json, resource, sys, time
    from harness.execute.runner import run_suite
    start = time.perf_counter()
    summary = run_suite(sys.argv[1], sys.argv[2], num_cpus=2, quiet=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"jobs": summary.total_jobs, "done": summary.done, "failed": summary.failed,
                      "seconds": seconds, "peak_in_flight": summary.peak_in_flight,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def run_load(tmp_path: Path, pairs: int) -> dict:
    manifest = write_drawn_manifest(tmp_path / f"data{pairs}", pairs)
    suite = write_suite_file(tmp_path / f"load{pairs}.yaml", manifest, [0], ["ssim_psnr", "oracle_preservation"])
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_DRIVER, str(suite), str(tmp_path / f"run{pairs}")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return last_json_line(result.stdout)


@pytest.mark.slow
def test_load_1000_pairs_with_bounded_driver_memory_and_in_flight_tasks(tmp_path: Path) -> None:
    small, large = run_load(tmp_path, 100), run_load(tmp_path, 1000)
    for report in (small, large):
        assert report["done"] == report["jobs"] and report["failed"] == 0, report
        assert 1 <= report["peak_in_flight"] <= 4  # default max_in_flight: 2 x the cluster's 2 CPUs
    assert_each_job_once(tmp_path / "run1000", 1000)
    # The driver keeps no per-job outputs: ten times the jobs may not cost more than a little bookkeeping.
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 150, (small, large)
    for report in (small, large):
        print(
            f"\nload: {report['jobs']} jobs in {report['seconds']:.1f} s = {report['jobs'] / report['seconds']:.1f} "
            f"jobs/s; driver peak RSS {report['peak_rss_mb']:.0f} MB; peak in flight {report['peak_in_flight']}"
        )
