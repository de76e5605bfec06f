"""The Ray runner: one result file per job, resume, learn once per concept, failures, 2 nodes, real CLiC."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import last_json_line
from PIL import Image
from run_inputs import SHIPPED_MANIFEST, SIZE, cut_paste_suite, make_pairs, make_suite

from harness import store
from harness.execute.runner import execute
from harness.plan.jobs import Pair
from harness.plan.suite import suite_from_dict


def test_run_resume_and_changed_setting(ray_session, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "data", 2, targets_per_source=2)
    run = tmp_path / "run"
    first = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert (first.done, first.failed, first.skipped) == (4, 0, 0)
    assert len(list(store.results_dir(run).glob("*.parquet"))) == 4
    results = store.read_results(run)
    assert set(results["status"]) == {"ok"} and {"ssim_outside", "psnr_outside"} <= set(results["metric"])
    assert (run / results["artifact_image"].iloc[0]).is_file()
    assert first.learns_run == 2  # two sources, two targets each: learned once per concept

    again = execute(cut_paste_suite(), pairs, run, quiet=True)
    assert (again.done, again.failed, again.skipped, again.learns_run) == (0, 0, 4, 0)
    columns = [c for c in store.RESULT_COLUMNS if c not in ("run_id",)]
    assert (
        store.read_results(run)[columns]
        .sort_values(["job_id", "metric"])
        .reset_index(drop=True)
        .equals(results[columns].sort_values(["job_id", "metric"]).reset_index(drop=True))
    )

    # cut-and-paste reads no transfer settings: a t_start sweep is the same four jobs, not eight
    swept = execute(cut_paste_suite(transfer={"t_start": [10, 12], "eta": [1.0], "steps": 20}), pairs, run, quiet=True)
    assert (swept.total_jobs, swept.done, swept.skipped) == (4, 0, 4)
    wider = execute(cut_paste_suite(seeds=[0, 1]), pairs, run, quiet=True)
    assert (wider.done, wider.skipped, wider.learns_run) == (4, 4, 2)  # seed 0's concepts come from the cache
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["learns_total"] == 4 and manifest["counts"]["done"] == 4


def test_not_applicable_and_failed_jobs_do_not_stop_the_run(ray_session, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "data", 3)
    # An all-black target mask: cut_paste raises on the empty mask (clic.io refuses it even earlier).
    broken = Image.new("L", (SIZE, SIZE), 0)
    broken.save(tmp_path / "data" / "empty.png")
    pairs[1] = Pair(**{**pairs[1].__dict__, "pair_id": "broken", "target_mask": str(tmp_path / "data" / "empty.png")})
    run = tmp_path / "run"
    summary = execute(
        cut_paste_suite(generate={"objects": ["vase"], "steps": 10}, tasks=["transfer", "generate"]),
        pairs,
        run,
        quiet=True,
    )
    assert (summary.done, summary.failed, summary.not_applicable) == (2, 1, 3)
    results = store.read_results(run)
    failed = results[results["status"] == "failed"]
    assert list(failed["pair_id"]) == ["broken"] and "\n" not in failed["error"].iloc[0] and failed["error"].iloc[0]
    na = results[results["status"] == "not_applicable"]
    assert set(na["task"]) == {"generate"} and na["metric"].isna().all() and na["value"].isna().all()
    retry = execute(
        cut_paste_suite(generate={"objects": ["vase"], "steps": 10}, tasks=["transfer", "generate"]),
        pairs,
        run,
        quiet=True,
        retry_failed=True,
    )
    assert (retry.done + retry.failed, retry.skipped) == (1, 5)


@pytest.mark.slow  # a throughput measurement (printed, not asserted); benchmarks/perf measures it properly
def test_throughput_with_cut_paste(ray_session, tmp_path: Path) -> None:
    """Measured, not asserted: jobs/s with cut_paste on ~50 jobs and the share of harness overhead."""
    pairs = make_pairs(tmp_path / "data", 10, targets_per_source=5)
    start = time.perf_counter()
    summary = execute(cut_paste_suite(), pairs, tmp_path / "run", quiet=True)
    seconds = time.perf_counter() - start
    assert summary.done == 50
    print(
        f"\ncut_paste: {summary.done} jobs in {seconds:.1f} s = {summary.done / seconds:.1f} jobs/s; "
        f"harness overhead share {summary.overhead_share:.0%}"
    )


def test_tiny_clic_learn_then_transfer(ray_session, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "data", 1)
    suite = make_suite(
        {
            "name": "tiny-clic",
            "model": "tiny",
            "resolution": 64,
            "methods": [{"name": "clic", "presets": ["paper"], "learn": {"steps": 3}}],
            "seeds": [0],
            "transfer": {"t_start": [3], "eta": [1.0], "steps": 5},
            "metrics": ["ssim_psnr"],
        }
    )
    summary = execute(suite, pairs, tmp_path / "run", quiet=True)
    results = store.read_results(tmp_path / "run")
    assert summary.done == 1 and summary.learns_run == 1, results["error"].tolist()
    row = results.iloc[0]
    assert row["weights_label"] == "tiny-random" and row["learn_seconds"] > 0
    assert (tmp_path / "run" / row["artifact_losses"]).is_file()
    assert (tmp_path / "run" / row["artifact_attention"]).is_file()
    # each row records its job's peak memory (peak RSS of the worker on the CPU: at least the loaded model)
    assert row["peak_memory_mb"] > 100 and row["learn_peak_memory_mb"] > 100
    # The cold start (the slowest worker warm-up) is reported apart: after it, less of the wall is overhead.
    timing = store.read_run_record(tmp_path / "run")["timing"]
    assert timing["cold_start_seconds"] == summary.cold_start_seconds >= 0
    assert 0 <= timing["warm_overhead_share"] <= timing["overhead_share"] or timing["overhead_share"] == 0


def test_dtype_is_part_of_concept_ids_and_device_is_not(tmp_path: Path) -> None:
    from harness.plan.job_graph import build_job_graph
    from harness.plan.resolve import describe_models, method_tasks, plan_from_suite

    pairs = make_pairs(tmp_path / "data", 1)
    learns = {}
    for device, dtype in (("auto", "fp32"), ("cpu", "fp32"), ("auto", "bf16")):
        suite = make_suite(
            {
                "name": "placed",
                "model": "tiny",
                "device": device,
                "dtype": dtype,
                "methods": [{"name": "clic"}],
                "metrics": ["ssim_psnr"],
            }
        )
        models, native = describe_models(suite)
        assert models["clic"].dtype == dtype and models["clic"].device == device
        plan = plan_from_suite(suite, suite.resolution or native)
        learns[(device, dtype)] = set(build_job_graph(pairs, plan, models, method_tasks(plan)).learns)
    assert learns[("auto", "fp32")] == learns[("cpu", "fp32")]  # a run resumes on other hardware
    assert learns[("auto", "fp32")].isdisjoint(learns[("auto", "bf16")])
    with pytest.raises(ValueError, match="device"):
        make_suite({"name": "bad", "model": "tiny", "device": "tpu", "methods": [{"name": "clic"}]})
    with pytest.raises(ValueError, match="dtype"):
        make_suite({"name": "bad", "model": "tiny", "dtype": "fp8", "methods": [{"name": "clic"}]})


TWO_NODE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    sys.path.insert(0, {root!r})
    import ray
    from ray.cluster_utils import Cluster
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from run_inputs import make_pairs, cut_paste_suite
    from harness.execute.runner import execute

    # Each learn and transfer sleeps 0.5 s and takes the node's only CPU, so overlapping jobs cannot share
    # a node: the assertion holds however fast the jobs would otherwise be (plain cut-and-paste jobs are so
    # short that one warm worker can drain the queue before a second lease is granted).
    slow = dict(methods=[{{"name": "fault_injection", "presets": ["slow"]}}])

    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    tmp = Path({tmp!r})
    # Warm a worker on each node first, so that neither node spends the run importing torch.
    execute(cut_paste_suite(**slow), make_pairs(tmp / "warm-data", 2), tmp / "warm-run", quiet=True)
    summary = execute(cut_paste_suite(**slow), make_pairs(tmp / "data", 6, targets_per_source=4), tmp / "run",
                      quiet=True)
    print(json.dumps({{"done": summary.done, "learns": summary.learns_run, "nodes": dict(summary.node_ids),
                      "learn_nodes": dict(summary.learn_node_ids)}}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow
def test_two_node_cluster(tmp_path: Path) -> None:
    """Jobs land on both nodes of a 2-node cluster and each concept is learned once (own process)."""
    root = str(Path(__file__).resolve().parents[2])
    script = TWO_NODE_SCRIPT.format(root=root, tests=str(Path(__file__).resolve().parents[1]), tmp=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    report = last_json_line(result.stdout)
    assert report["done"] == 24 and report["learns"] == 6
    assert len(report["nodes"]) == 2 and len(report["learn_nodes"]) == 2, report
    assert sum(report["learn_nodes"].values()) == 6, report


def test_unset_stage_one_steps_leaves_each_preset_its_own() -> None:
    base = {
        "name": "stage-one",
        "manifest": SHIPPED_MANIFEST,
        "tasks": ["generate"],
        "methods": [{"name": "single_insert", "presets": ["one-stage"]}],
    }
    unset = suite_from_dict(base, source="unset", base_dir=Path.cwd()).runs[0][0].generate[0].settings
    assert unset.stage_one_steps == 0  # the preset's, not a suite default of 5
    explicit = suite_from_dict({**base, "generate": {"stage_one_steps": 3}}, source="set", base_dir=Path.cwd())
    assert explicit.runs[0][0].generate[0].settings.stage_one_steps == 3
