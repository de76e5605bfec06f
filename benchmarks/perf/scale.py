"""The harness's own costs at 1k / 10k / 100k jobs: plan, run overhead per job, driver peak memory, report time
and size, and a resume with nothing to do.

The jobs are as cheap as jobs get, so that what is timed is the harness: cut-and-paste (no model) scored by
closed-form metrics (SSIM/PSNR outside the RoI and the three oracle metrics), one job per manifest row. The
manifest's rows reuse the eight pairs of the shipped furniture set (absolute paths; each row its own pair id),
so building 100k rows writes one Parquet file and no image. Every step runs as its own process, as a user types
it (``clic-bench run`` / ``clic-bench report``), on a local cluster of ``--num-cpus`` CPUs; the driver's peak
memory is the driver process's own maximum resident set (``getrusage``), read by a small wrapper around
``harness.cli.main`` (the Ray workers and daemons are other processes and not counted).

The machine is shared: the load average before and after each size is recorded beside the figures.
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
SOURCE_MANIFEST = ROOT / "manifests" / "furniture" / "manifest.parquet"
METRICS = ["ssim_psnr", "pattern_fidelity", "pattern_leakage", "oracle_preservation"]

# Runs harness.cli.main in this process and prints the process's own peak resident set on stderr's last line:
# Linux's VmHWM of the process's memory map. getrusage's ru_maxrss is not it: Linux carries the maximum across
# fork and exec, so a child of this benchmark reported this benchmark's own size (the 100k rows it filled in).
_DRIVER = """
import resource, sys, json
sys.path.insert(0, {root!r})
from harness.cli import main
code = main({argv!r})
try:
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("SCALE-PEAK-RSS " + json.dumps(peak), file=sys.stderr)
sys.exit(code)
"""


def synthetic_manifest(rows: int, path: Path) -> Path:
    """``rows`` pairs whose files are the shipped furniture set's, cycled (copied beside it, own pair ids)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.read_table(SOURCE_MANIFEST).to_pylist()
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in ("images", "masks"):
        if not (path.parent / folder).exists():
            shutil.copytree(SOURCE_MANIFEST.parent / folder, path.parent / folder)
    out = []
    for index in range(rows):
        row = dict(source[index % len(source)])
        row["pair_id"] = f"scale-{index:06d}"
        out.append(row)
    table = pa.Table.from_pylist(out, schema=pq.read_schema(SOURCE_MANIFEST))
    pq.write_table(table, path)
    return path


def scale_suite(manifest: Path, path: Path) -> Path:
    data = {
        "name": "perf-scale",
        "model": "tiny",
        "manifests": [str(manifest)],
        "seeds": [0],
        "methods": [{"name": "cut_paste"}],
        "transfer": {"t_start": [4], "steps": 20},
        "tasks": ["transfer"],
        "metrics": METRICS,
        "resources": {"num_cpus": 1, "num_gpus": 0},
    }
    path.write_text(json.dumps(data))
    return path


def _cli(argv: list[str], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER.format(root=str(ROOT), argv=argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    peak = [line for line in out.stderr.splitlines() if line.startswith("SCALE-PEAK-RSS ")]
    if out.returncode != 0 or not peak:
        tail = [line for line in out.stderr.splitlines() if line.strip()][-3:]
        raise RuntimeError(f"clic-bench {' '.join(argv[:1])} exited {out.returncode}: {tail}")
    return {"seconds": seconds, "peak_rss_bytes": int(json.loads(peak[-1].split(" ", 1)[1])), "stdout": out.stdout}


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _plan_seconds(suite_path: Path) -> dict[str, float]:
    """Preflight (manifest validation, models, plan) and the job graph, in a fresh process, nothing cached."""
    script = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
started = time.perf_counter()
from harness.plan.preflight import preflight
from harness.plan.job_graph import build_job_graph
from harness.plan.resolve import method_tasks
imports = time.perf_counter()
checked = preflight({str(suite_path)!r}, allow_random_metrics=True, out={str(suite_path.parent / "unused")!r})
validated = time.perf_counter()
graph = build_job_graph(checked.pairs, checked.plan, checked.models, method_tasks(checked.plan))
done = time.perf_counter()
print(json.dumps({{"imports_s": imports - started, "preflight_s": validated - imports, "graph_s": done - validated,
                  "jobs": len(graph.jobs)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_size(jobs: int, root: Path, num_cpus: int = 2) -> dict[str, Any]:
    """One size: build its manifest and suite, then plan, run, report, resume (each a new process)."""
    load_before = os.getloadavg()
    manifest = synthetic_manifest(jobs, root / "manifest.parquet")
    suite = scale_suite(manifest, root / "suite.json")
    run_dir = root / "run"
    plan = _plan_seconds(suite)
    timeout = 600 + jobs * 0.5
    common = ["--out", str(run_dir), "--num-cpus", str(num_cpus), "--quiet", "--allow-random-metrics"]
    run = _cli(["run", str(suite), *common, "--no-report"], timeout)
    manifest_json = json.loads((run_dir / "run.json").read_text())
    timing = manifest_json["timing"]
    report = _cli(["report", str(run_dir)], timeout)
    resume = _cli(["run", str(suite), *common, "--no-report"], timeout)
    load_after = os.getloadavg()
    ray_wall, work = timing["wall_seconds"], timing["work_seconds"]
    slots = timing["worker_slots"] or num_cpus
    return {
        "jobs": plan["jobs"],
        "done": manifest_json["counts"]["done"],
        "failed": manifest_json["counts"]["failed"],
        "plan": plan,
        "run_s": run["seconds"],
        "run_ray_wall_s": ray_wall,
        "work_s": work,
        "slots": slots,
        "overhead_share": timing["overhead_share"],
        "overhead_ms_per_job": 1000 * max(0.0, slots * ray_wall - work) / max(1, plan["jobs"]),
        "jobs_per_s": plan["jobs"] / ray_wall if ray_wall else None,
        "driver_peak_rss_mb": run["peak_rss_bytes"] / 2**20,
        **_report_and_resume(run_dir, report, resume, load_before, load_after),
    }


def filled_size(jobs: int, root: Path, template_run: Path, num_cpus: int = 2) -> dict[str, Any]:
    """A run of ``jobs`` jobs completed without running them: every job of the plan gets the rows its template
    (the job of the real run ``template_run`` on the same files, which cut-and-paste makes identical) recorded
    under its own job and pair id, written as compacted result files as a finished run leaves them; the
    artifacts are the template jobs'. Then the same resume and report as a real run: what a finished 10k/100k
    run costs to resume and report, measured in minutes on a shared 2-core machine instead of hours."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from harness import store

    load_before = os.getloadavg()
    manifest = synthetic_manifest(jobs, root / "manifest.parquet")
    suite = scale_suite(manifest, root / "suite.json")
    run_dir = root / "run"
    plan = _plan_seconds(suite)
    template = pa.concat_tables(store._read_tables(template_run))
    pairs_in_template = sorted(set(template.column("pair_id").to_pylist()))
    started = time.perf_counter()
    (run_dir / store.RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    for folder in ("artifacts", "concepts"):
        if (template_run / folder).exists() and not (run_dir / folder).exists():
            import shutil

            shutil.copytree(template_run / folder, run_dir / folder)
    job_ids = _planned_job_ids(suite)  # pair id -> job id, as the run plans them
    by_template = {pair: template.filter(pc.equal(template.column("pair_id"), pair)) for pair in pairs_in_template}
    planned = sorted(job_ids.items())
    parts = []
    for slot, pair in enumerate(pairs_in_template):  # every job whose index is ``slot`` modulo the templates
        rows, mine = by_template[pair], planned[slot :: len(pairs_in_template)]
        if not mine:
            continue
        repeated = pa.concat_tables([rows] * len(mine))
        for column, values in (("job_id", [job for _, job in mine]), ("pair_id", [p for p, _ in mine])):
            repeated = repeated.set_column(
                repeated.schema.get_field_index(column),
                column,
                pa.array(np.repeat(values, len(rows)).tolist(), pa.string()),
            )
        parts.append(repeated)
    filled = pa.concat_tables(parts).combine_chunks()
    for sequence, start in enumerate(range(0, len(filled), store.COMPACT_ROWS), start=1):
        store._write_table_atomic(
            run_dir / store.RESULTS_DIR / f"{store.COMPACTED_PREFIX}{sequence:06d}.parquet",
            filled.slice(start, store.COMPACT_ROWS),
        )
    fill_s = time.perf_counter() - started
    common = ["--out", str(run_dir), "--num-cpus", str(num_cpus), "--quiet", "--allow-random-metrics"]
    timeout = 600 + jobs * 0.05
    first = _cli(["run", str(suite), *common, "--no-report"], timeout)  # writes plan, pairs, run.json, file facts
    resume = _cli(["run", str(suite), *common, "--no-report"], timeout)
    report = _cli(["report", str(run_dir)], timeout)
    load_after = os.getloadavg()
    return {
        "jobs": plan["jobs"],
        "filled": True,
        "fill_s": fill_s,
        "plan": plan,
        "first_resume_s": first["seconds"],
        "first_resume_line": first["stdout"].strip().splitlines()[0],
        "first_resume_peak_rss_mb": first["peak_rss_bytes"] / 2**20,
        **_report_and_resume(run_dir, report, resume, load_before, load_after),
    }


def _planned_job_ids(suite_path: Path) -> dict[str, str]:
    """pair id -> its (one) job id, planned in a fresh process exactly as `clic-bench run` plans it."""
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from harness.plan.preflight import preflight
from harness.plan.job_graph import build_job_graph
from harness.plan.resolve import method_tasks
checked = preflight({str(suite_path)!r}, allow_random_metrics=True, out={str(suite_path.parent / "unused")!r})
graph = build_job_graph(checked.pairs, checked.plan, checked.models, method_tasks(checked.plan))
print(json.dumps({{job.pair_id: job.job_id for job in graph.jobs}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale(
    sizes: tuple[int, ...] = (1_000, 10_000), num_cpus: int = 2, keep: str | None = None, filled: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Every size in ``sizes`` run for real, smallest first, each in a fresh folder (kept under ``keep`` if
    given); then every size in ``filled`` completed from the largest real run (:func:`filled_size`)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(keep) if keep else Path(tmp)
        for jobs in sizes:
            results.append(measure_size(jobs, base / f"scale-{jobs}", num_cpus))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        for jobs in filled:
            template = base / f"scale-{max(sizes)}" / "run"
            results.append(filled_size(jobs, base / f"filled-{jobs}", template, num_cpus))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {"sizes": results, "cpus": os.cpu_count()}


def scale_rows(scale_results: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows = []
    for size in scale_results["sizes"]:
        at = f"scale {size['jobs']} jobs"
        load = f"load average {size['load_average_before'][0]:.1f} -> {size['load_average_after'][0]:.1f}"
        plan = size["plan"]
        rows.append(
            (
                f"{at}: plan (s)",
                plan["preflight_s"] + plan["graph_s"],
                f"preflight (manifest validation, models, plan) {plan['preflight_s']:.1f} s + job graph "
                f"{plan['graph_s']:.1f} s, no file facts cached; imports {plan['imports_s']:.1f} s not included; {load}",
            )
        )
        if size.get("filled"):
            rows.append(
                (
                    f"{at}: first run on the completed folder (s)",
                    size["first_resume_s"],
                    f"results filled from the real run's rows ({size['fill_s']:.0f} s), not run; this run "
                    f"checks and hashes the files once (file_facts.json): {size['first_resume_line'][:70]}",
                )
            )
            rows.append(
                (
                    f"{at}: driver peak memory planning every job (MB)",
                    size["first_resume_peak_rss_mb"],
                    "max resident set of that first `clic-bench run`: it builds the whole job graph, as a "
                    "fresh run of this size does before its first job",
                )
            )
        else:
            rows.append(
                (
                    f"{at}: run overhead per job (ms)",
                    size["overhead_ms_per_job"],
                    f"whole run {size['run_s']:.0f} s, Ray part {size['run_ray_wall_s']:.0f} s on {size['slots']} "
                    f"slots ({size['jobs_per_s']:.1f} jobs/s, overhead {size['overhead_share']:.0%}); {load}",
                )
            )
            rows.append(
                (
                    f"{at}: driver peak memory (MB)",
                    size["driver_peak_rss_mb"],
                    f"max resident set of the `clic-bench run` process; run folder {size['run_folder_mb']:.0f} MB",
                )
            )
        rows.append(
            (
                f"{at}: report (s)",
                size["report_s"],
                f"`clic-bench report` process, peak memory {size['report_peak_rss_mb']:.0f} MB",
            )
        )
        rows.append((f"{at}: report size (MB)", size["report_mb"], "the report folder"))
        rows.append(
            (
                f"{at}: resume with nothing to do (s)",
                size["resume_s"],
                f"`clic-bench run --no-report` again, whole process; peak memory "
                f"{size['resume_peak_rss_mb']:.0f} MB; said: {size['resume_line'][:70]}",
            )
        )
        rows.append(
            (
                f"{at}: resume peak memory (MB)",
                size["resume_peak_rss_mb"],
                "the driver of a resume with nothing to do (the stored plan's fingerprint matches: no job graph)",
            )
        )
    return rows


def _report_and_resume(run_dir: Path, report: dict, resume: dict, load_before: tuple, load_after: tuple) -> dict:
    """The figures every size shares: the report's time, size and memory, the resume's, the folder, the load."""
    return {
        "report_s": report["seconds"],
        "report_mb": _folder_bytes(run_dir / "report") / 2**20,
        "report_peak_rss_mb": report["peak_rss_bytes"] / 2**20,
        "resume_s": resume["seconds"],
        "resume_peak_rss_mb": resume["peak_rss_bytes"] / 2**20,
        "resume_line": resume["stdout"].strip().splitlines()[0] if resume["stdout"].strip() else "",
        "run_folder_mb": _folder_bytes(run_dir) / 2**20,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }
