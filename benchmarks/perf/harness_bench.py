"""Harness throughput and overhead (cut-and-paste and tiny CLiC suites), and scaling from 1 to 2 nodes.

Overhead = the share of (worker slots × wall time) not spent inside method or metric work, measured from
the results table: each concept's learning time counted once, plus every job's task and metric time.
The one-time Ray cluster start is reported on its own (a cluster user has it running already).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = [str(ROOT / "manifests" / name / "manifest.parquet") for name in ("furniture", "jewelry", "building", "kitchenware")]


def _suite(data: dict[str, Any]):
    from harness.suite import suite_from_dict

    return suite_from_dict({"manifests": MANIFESTS, "model": "tiny", "seeds": [0], **data}, source="perf-suite",
                           base_dir=ROOT)


def measure_run(suite, run_dir: Path, slots: int) -> dict[str, Any]:
    from harness.runner import execute, load_pairs
    from harness.store import read_results

    pairs = load_pairs(suite)
    started = time.perf_counter()
    summary = execute(suite, pairs, run_dir, quiet=True)
    wall = time.perf_counter() - started
    results = read_results(run_dir)
    jobs = results.drop_duplicates("job_id")
    learn = jobs.drop_duplicates("concept_id")["learn_seconds"].fillna(0).sum()
    work = learn + jobs["task_seconds"].fillna(0).sum() + jobs["metric_seconds"].fillna(0).sum()
    return {"jobs": int(summary.done), "failed": int(summary.failed), "wall_s": wall, "jobs_per_s": summary.done / wall,
            "method_and_metric_s": float(work), "slots": slots,
            "overhead_share": max(0.0, 1 - float(work) / (slots * wall))}


def harness_overhead(clic_steps: int = 150) -> dict[str, Any]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    cluster_start = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cut_paste = measure_run(_suite({
                "name": "perf-cut-paste", "methods": [{"name": "cut_paste"}],
                "transfer": {"t_start": [5, 10, 15, 20], "steps": 20}, "metrics": ["ssim_psnr"],
            }), Path(tmp) / "cut_paste", slots=2)
            tiny_clic = measure_run(_suite({
                "name": "perf-tiny-clic", "methods": [{"name": "clic", "learn": {"steps": clic_steps}}],
                "limit_pairs": 2, "transfer": {"t_start": [10], "steps": 20},
                "metrics": ["ssim_psnr", "oracle_preservation"],
            }), Path(tmp) / "clic", slots=2)
    finally:
        ray.shutdown()
    return {"cluster_start_s": cluster_start, "cut_paste": cut_paste, "tiny_clic": tiny_clic}


_SCALING_SCRIPT = """
import json, os, sys, time, tempfile
os.environ["RAY_AUTH_MODE"] = "disabled"
sys.path.insert(0, {root!r})
import ray
from ray.cluster_utils import Cluster
from pathlib import Path
from benchmarks.perf.harness_bench import _suite, measure_run

cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
for _ in range({nodes} - 1):
    cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)
cluster.wait_for_nodes()
suite = _suite({{"name": "perf-scaling", "methods": [{{"name": "clic", "learn": {{"steps": {steps}}}}}],
                "limit_pairs": 4, "transfer": {{"t_start": [5], "steps": 10}}, "metrics": ["ssim_psnr"]}})
with tempfile.TemporaryDirectory() as tmp:
    print(json.dumps(measure_run(suite, Path(tmp) / "run", slots={nodes})))
ray.shutdown()
cluster.shutdown()
"""


def scaling(steps: int = 60) -> dict[str, Any]:
    """The same CPU-bound tiny-CLiC suite (16 concepts) on 1 node of 1 CPU and on 2 nodes of 1 CPU each."""
    runs = {}
    for nodes in (1, 2):
        script = _SCALING_SCRIPT.format(root=str(ROOT), nodes=nodes, steps=steps)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"scaling run with {nodes} node(s) failed: {out.stderr.strip().splitlines()[-1:]}")
        runs[nodes] = json.loads(out.stdout.strip().splitlines()[-1])
    efficiency = runs[1]["wall_s"] / (2 * runs[2]["wall_s"])
    return {"one_node_wall_s": runs[1]["wall_s"], "two_nodes_wall_s": runs[2]["wall_s"], "jobs": runs[2]["jobs"],
            "scaling_efficiency": efficiency}
