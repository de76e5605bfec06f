"""`clic-bench perf` / `python -m benchmarks.perf`: every performance benchmark in one run, one table.

Writes OUT/perf.json and OUT/perf.md with each measured ratio beside its target. Everything runs on the
CPU with the tiny models; the GPU expectations are in benchmarks/perf/README.md. ``--arch sd15`` (or ``sd21``)
runs the steps section on that architecture with random weights instead (real_size.py): seconds per step, the
memory kept for backward, FLOPs, at small sizes and counted at the native one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import UsageError

TARGETS = {
    "fused speedup at 64 px": (">=", 1.6),
    "fused speedup at 128 px": (">=", 1.6),
    "fused vs naive loss, max relative difference": ("<=", 1e-5),
    "sd15 (random weights): fused vs naive loss, max relative difference": ("<=", 1e-5),
    "sd21 (random weights): fused vs naive loss, max relative difference": ("<=", 1e-5),
    "attention capture overhead": ("<=", 0.15),
    "harness overhead, smoke suite, warm workers (median of 3)": ("<=", 0.05),
    "harness overhead, smoke suite, fresh cluster (cold workers)": ("<=", 0.15),
    "preflight, smoke suite without metric weights (s)": ("<=", 15.0),
    "scaling efficiency, 1 -> 2 nodes": (">=", 0.85),
    "read a 100k-row run, compacted (s)": ("<=", 5.0),
    "learn_concept per step / fused step": ("<=", 1.3),
    "learn_concept per step / fused step, 1 thread": ("<=", 1.3),
    "shell loop of clic learn + transfer / clic-bench run, 8 pairs": (">=", 2.0),
    "metric actors, 2 vs 1: speedup / this machine's 2-process speedup": (">=", 0.9),
    # issue 25: a 100,000-job run (benchmarks/perf/scale.py)
    "scale 100000 jobs: driver peak memory (MB)": ("<=", 2048.0),  # a real 100k run (CLIC_PERF_SCALE_RUN_MAX)
    "scale 100000 jobs: resume peak memory (MB)": ("<=", 2048.0),  # a resume with nothing to do
    "scale 100000 jobs: driver peak memory planning every job (MB)": ("<=", 2048.0),  # the whole 100k-job graph
    "scale 100000 jobs: report (s)": ("<=", 30.0),
    "scale 100000 jobs: report size (MB)": ("<=", 50.0),
    "scale 100000 jobs: resume with nothing to do (s)": ("<=", 15.0),
}


def _check(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    met = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g}: {'met' if met else 'NOT met'}"


SECTIONS = (
    "steps",
    "learn_loop",
    "cached_work",
    "metrics",
    "metric_pool",
    "harness",
    "end_to_end",
    "scaling",
    "results",
    "scale",
)
# `scale` is the harness at 1k / 10k (/ 100k with --scale-jobs) cheap jobs: minutes to an hour, so it runs
# only when named (--only scale), not in the default all-sections run.
DEFAULT_SECTIONS = tuple(section for section in SECTIONS if section != "scale")
SCALE_JOBS = (1_000, 10_000, 100_000)
# sizes above this are not run through Ray but completed from the largest real run (benchmarks/perf/scale.py,
# filled_size): their resume and report are measured, not their run
SCALE_RUN_MAX = int(os.environ.get("CLIC_PERF_SCALE_RUN_MAX", "1000"))


def run_all(
    quick: bool,
    only: frozenset[str] = frozenset(DEFAULT_SECTIONS),
    arch: str = "tiny",
    scale_jobs: tuple[int, ...] = SCALE_JOBS,
) -> dict[str, Any]:
    from .end_to_end import shell_loop_vs_harness
    from .harness_bench import harness_overhead, preflight_seconds, scaling
    from .learning import cached_work, capture_cost, fused_vs_naive, learn_loop_cost
    from .metrics_bench import metric_throughput
    from .results_bench import results_read
    from .steps import batching_ceiling

    repeats = 5 if quick else 11
    results: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "quick": quick,
        "sections": sorted(only),
        "arch": arch,
    }
    started = time.perf_counter()
    if "steps" in only and arch != "tiny":
        from .real_size import real_size_costs

        results["real_size"] = real_size_costs(arch, quick)
    elif "steps" in only:
        results["fused_vs_naive"] = [fused_vs_naive(r, repeats) for r in (64, 128)]
        results["batching_ceiling"] = [batching_ceiling(r, repeats) for r in (64, 128)]
        results["capture"] = [capture_cost(r, repeats) for r in (64, 128)]
    if "learn_loop" in only:
        results["learn_loop"] = learn_loop_cost(20, 50 if quick else 80)
    if "cached_work" in only:
        results["cached_work"] = cached_work(30 if quick else 60)
    if "metrics" in only:
        results["metrics"] = metric_throughput(32 if quick else 64)
    if "metric_pool" in only:
        from .metrics_bench import metric_pool_scaling

        results["metric_pool"] = metric_pool_scaling(8 if quick else 12)
    if "harness" in only:
        results["harness"] = harness_overhead()
        results["preflight"] = preflight_seconds()
    if "end_to_end" in only:
        results["end_to_end"] = shell_loop_vs_harness(steps=30)
    if "scaling" in only:
        results["scaling"] = scaling(steps=40 if quick else 80)
    if "results" in only:
        results["results"] = results_read(100_000, rows_per_job=100)
    if "scale" in only:
        from .scale import scale

        filled = tuple(jobs for jobs in scale_jobs if jobs > SCALE_RUN_MAX)  # completed from the largest real run
        results["scale"] = scale(tuple(jobs for jobs in scale_jobs if jobs <= SCALE_RUN_MAX) or (1_000,), filled=filled)
    results["seconds"] = time.perf_counter() - started
    return results


def summary_rows(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    if "real_size" in results:
        rows += _real_size_rows(results["real_size"])
    if "fused_vs_naive" in results:
        rows += _step_rows(results)
    if "learn_loop" in results:
        rows += _learn_loop_rows(results["learn_loop"])
    if "cached_work" in results:
        rows += _cached_rows(results["cached_work"])
    if "harness" in results:
        rows += _harness_rows(results["harness"])
    if "preflight" in results:
        pre = results["preflight"]
        rows.append(
            (
                "preflight, smoke suite without metric weights (s)",
                pre["seconds"],
                f"a new `clic-bench run benchmarks/smoke.yaml` process without --allow-random-metrics: exit "
                f"{pre['exit_code']}, {pre['lines']} line(s) on stderr, {pre['missing_weight_lines']} naming a "
                f"missing weight file; no Ray, no worker",
            )
        )
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        rows.append(
            (
                "shell loop of clic learn + transfer / clic-bench run, 8 pairs",
                e2e["ratio"],
                f"{e2e['pairs']} pairs, CLiC {e2e['steps']} learning steps + one transfer each: a bash loop of "
                f"clic processes {e2e['loop_s']:.0f} s vs clic-bench run (local cluster, cold) "
                f"{e2e['harness_s']:.0f} s",
            )
        )
    if "scaling" in results:
        rows += _scaling_rows(results["scaling"])
    for metric in results.get("metrics", []):
        rows.append(
            (
                f"metric {metric['metric']}: batched images/s",
                metric["batched_images_per_s"],
                f"one by one {metric['single_images_per_s']:.0f}/s (x{metric['batching_speedup']:.1f}); "
                f"model loads {metric['model_loads']}; weights {metric['weights']}",
            )
        )
    if "metric_pool" in results:
        pool = results["metric_pool"]
        rows.append(
            (
                "metric actors, 2 vs 1: speedup / this machine's 2-process speedup",
                pool["share_of_machine"],
                f"{pool['batches']} batches of {pool['batch_size']} images at {pool['size']} px (LPIPS + CLIP, "
                f"random weights) on a 2-CPU local cluster: 1 actor {pool['one_actor_s']:.2f} s, 2 actors "
                f"{pool['two_actors_s']:.2f} s (x{pool['pool_speedup']:.2f}; "
                f"{pool['images_per_s_one_actor']:.1f} -> {pool['images_per_s_two_actors']:.1f} images/s); "
                f"2 plain processes doing the same scoring: x{pool['machine_speedup']:.2f} "
                f"({pool['one_process_s']:.2f} -> {pool['two_processes_s']:.2f} s), same run; "
                f"same values from 1 and 2 actors: {pool['same_values']}",
            )
        )
    if "results" in results:
        read = results["results"]
        rows.append(
            (
                "read a 100k-row run, compacted (s)",
                read["compacted_read_s"],
                f"{read['rows']} rows of {read['jobs']} jobs: {read['compacted_files']} compacted file(s) vs "
                f"{read['journal_read_s']:.1f} s from the {read['jobs']} per-job files; compaction took "
                f"{read['compact_s']:.1f} s",
            )
        )
    if "scale" in results:
        from .scale import scale_rows

        rows += scale_rows(results["scale"])
    return rows


def _step_rows(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows = []
    for case in results["fused_vs_naive"]:
        rows.append(
            (
                f"fused speedup at {case['resolution']} px",
                case["speedup"],
                f"fused {case['fused_ms']:.1f} ms vs naive {case['naive_ms']:.1f} ms; memory kept for backward "
                f"{case['fused_activation_mb']:.1f} vs {case['naive_activation_mb']:.1f} MB",
            )
        )
    for case in results.get("batching_ceiling", []):
        rows.append(
            (
                f"batching ceiling at {case['resolution']} px",
                case["ceiling"],
                f"text + UNet passes of both branches: 2 x batch 1 {case['separate_ms']:.1f} ms vs batch 2 "
                f"{case['batched_ms']:.1f} ms (same FLOPs: the most batching can save on this machine)",
            )
        )
    rows.append(
        (
            "fused vs naive loss, max relative difference",
            max(c["max_rel_loss_diff"] for c in results["fused_vs_naive"]),
            "l_con, l_att, l_RoI, total",
        )
    )
    for case in results["capture"]:
        name = (
            "attention capture overhead"
            if case["resolution"] == 64
            else f"attention capture overhead at {case['resolution']} px"
        )
        rows.append(
            (
                name,
                case["capture_overhead"],
                f"{case['capture_on_ms']:.1f} vs {case['capture_off_ms']:.1f} ms; keeps at most "
                f"{case['largest_kept_elements']} elements per layer (full probabilities: {case['full_probabilities_elements']})",
            )
        )
    return rows


def _learn_loop_rows(loop: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows = []
    for setting in loop["settings"]:
        threads = setting["threads"]
        name = "learn_concept per step / fused step" + ("" if threads != 1 else ", 1 thread")
        rows.append(
            (
                name,
                setting["ratio"],
                f"{threads} torch thread(s), OMP_WAIT_POLICY {loop['omp_wait_policy']}: whole CLiC learning runs ({loop['short_steps']} vs "
                f"{loop['long_steps']} steps: {setting['short_s']:.1f} / {setting['long_s']:.1f} s) cost "
                f"{setting['learn_per_step_ms']:.0f} ms per extra step, the loop's own step alone (forward + "
                f"backward, same batches) {setting['fused_step_ms']:.0f} ms; CPU time {setting['learn_per_step_cpu_ms']:.0f}"
                f" vs {setting['fused_step_cpu_ms']:.0f} ms (x{setting['cpu_ratio']:.2f}); load average "
                f"{loop['load_average_before']} -> {loop['load_average_after']}",
            )
        )
    return rows


def _real_size_rows(real: dict[str, Any]) -> list[tuple[str, float, str]]:
    arch, rows = real["arch"], []
    for case in real["measured"]:
        at = f"{arch} (random weights), {case['resolution']} px"
        rows.append(
            (
                f"{at}: fused step, s",
                case["fused_ms"] / 1000,
                f"forward + backward, best round, {real['threads']} CPU thread(s), load average {real['load_average'][0]:.1f} "
                f"-> {real['load_average'][1]:.1f}; "
                f"{case['fused_gflops']:.0f} GFLOPs per step (counted) -> {case['fused_gflops_per_s']:.0f} GFLOP/s",
            )
        )
        rows.append(
            (
                f"{at}: naive step, s",
                case["naive_ms"] / 1000,
                f"same FLOPs ({case['naive_gflops']:.0f} GFLOPs) as two passes -> {case['naive_gflops_per_s']:.0f} GFLOP/s",
            )
        )
        rows.append((f"{at}: fused speedup", case["speedup"], "naive s / fused s on this CPU"))
        rows.append(
            (
                f"{at}: memory kept for backward, fused (MB)",
                case["fused_activation_mb"],
                f"saved tensors, weights excluded; counted on meta: {case['meta_fused_activation_mb']:.1f} MB",
            )
        )
        rows.append(
            (
                f"{at}: memory kept for backward, naive (MB)",
                case["naive_activation_mb"],
                f"with every attention probability; counted on meta: {case['meta_naive_activation_mb']:.1f} MB",
            )
        )
    rows.append(
        (
            f"{arch} (random weights): fused vs naive loss, max relative difference",
            max(c["max_rel_loss_diff"] for c in real["measured"]),
            "l_con, l_att, l_RoI, total",
        )
    )
    target = real["counted_at_target"]
    at = f"{arch}, {target['resolution']} px, counted on meta (nothing computed)"
    rows.append(
        (
            f"{at}: GFLOPs per step",
            target["fused_gflops"],
            f"forward + backward, fused and naive alike ({target['naive_gflops']:.0f}); UNet "
            f"{target['unet_parameters'] / 1e6:.1f} M parameters, {target['cross_attention_layers']} "
            f"cross-attention layers",
        )
    )
    rows.append(
        (
            f"{at}: memory kept for backward, fused (MB)",
            target["fused_activation_mb"],
            "fp32; flash attention keeps one log-sum-exp per query, not the probabilities",
        )
    )
    rows.append(
        (
            f"{at}: memory kept for backward, naive (MB)",
            target["naive_activation_mb"],
            f"fp32; with the attention probabilities of the layers the gradient passes through (its store "
            f"holds {target['naive_store_mb']:.0f} MB of probabilities, of every layer)",
        )
    )
    return rows


def _cached_rows(cached: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows = []
    rows.append(
        (
            "VAE encodes per learning run",
            cached["learn_vae_encodes"],
            f"{cached['learn_steps']} steps (geometric augmentations cached); text-encoder passes: "
            f"{cached['learn_text_encoder_calls']} (one batched pass per step)",
        )
    )
    rows.append(
        (
            "VAE encodes / text-encoder passes per transfer",
            cached["transfer_vae_encodes"],
            f"text encoder: {cached['transfer_text_encoder_calls']} for {cached['transfer_steps']} denoising steps",
        )
    )
    return rows


def _harness_rows(harness: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows = []
    rows.append(
        (
            "harness jobs/s, cut-and-paste",
            harness["cut_paste"]["jobs_per_s"],
            f"{harness['cut_paste']['jobs']} jobs in {harness['cut_paste']['wall_s']:.1f} s, overhead share "
            f"{harness['cut_paste']['overhead_share']:.0%}",
        )
    )
    smoke = harness["smoke"]
    cold, warm = smoke["cold"], smoke["warm"]
    rows.append(
        (
            "harness overhead, smoke suite, warm workers (median of 3)",
            warm["overhead_share"],
            f"runs {', '.join(f'{v:.1%}' for v in smoke['warm_overheads'])}: {warm['jobs']} jobs in "
            f"{warm['wall_s']:.1f} s, {warm['method_and_metric_s']:.1f} s of method + metric work on 2 slots",
        )
    )
    rows.append(
        (
            "harness overhead, smoke suite, fresh cluster (cold workers)",
            cold["overhead_share"],
            f"{cold['wall_s']:.1f} s: the workers' warm-up (imports of torch/diffusers, model build) took "
            f"{smoke['cold_start_s']:.1f} s, the run {smoke['cold_extra_wall_s']:.1f} s longer than a warm "
            f"one; Ray cluster start {harness['cluster_start_s']:.1f} s not included",
        )
    )
    return rows


def _scaling_rows(scaling: dict[str, Any]) -> list[tuple[str, float, str]]:
    rows = []
    walls = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(scaling["one_node_walls_s"], scaling["two_nodes_walls_s"]))
    rows.append(
        (
            "scaling efficiency, 1 -> 2 nodes",
            scaling["scaling_efficiency"],
            f"{scaling['jobs']} CPU-bound jobs, warm workers, "
            f"{'each node pinned to its own core' if scaling['pinned'] else 'nodes not pinned'}: best "
            f"{scaling['one_node_wall_s']:.1f} s on 1 node, {scaling['two_nodes_wall_s']:.1f} s on 2 "
            f"(runs, 1/2 nodes: {walls} s; method + metric seconds {scaling['task_seconds_one_node']:.0f} vs "
            f"{scaling['task_seconds_two_nodes']:.0f})",
        )
    )
    rows.append(
        (
            "scaling efficiency, work-normalised",
            scaling["busy_share_ratio"],
            "share of slot time spent in method + metric work, 2 nodes over 1 (the wall ratio above "
            "also carries any change in the jobs' own seconds between runs; above 1 it is noise)",
        )
    )
    machine = scaling["machine"]
    rows.append(
        (
            "parallel efficiency of this machine, 2 plain processes",
            machine["efficiency"],
            f"one CLiC learning run alone {machine['alone_s']:.1f} s, two at once {machine['two_at_once_s']:.1f} s "
            f"(no Ray, best of 2): what this machine gives two CPU-bound processes",
        )
    )
    return rows


def to_markdown(results: dict[str, Any]) -> str:
    arch = results.get("arch", "tiny")
    title = (
        "# Performance (CPU, tiny models: ratios, not absolute GPU figures)"
        if arch == "tiny"
        else f"# Performance (CPU; steps: the {arch} architecture with random weights, real shapes and costs; "
        f"other sections: tiny models)"
    )
    lines = [
        title,
        "",
        f"host {results['host']}, Python {results['python']}, {results['seconds']:.0f} s, quick={results['quick']}",
        "",
        "| measure | value | target | details |",
        "|---|---|---|---|",
    ]
    for name, value, details in summary_rows(results):
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} | {_check(name, float(value))} | {details} |")
    return "\n".join(lines) + "\n"


def perf_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch = getattr(args, "arch", "tiny")
    # A real architecture is for the steps section; the other sections stay on the tiny model if asked for.
    only = frozenset(args.only or (DEFAULT_SECTIONS if arch == "tiny" else ("steps",)))
    unknown = sorted(only - set(SECTIONS))
    if unknown:
        raise UsageError(f"--only: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    results = run_all(args.quick, only, arch, tuple(getattr(args, "scale_jobs", None) or SCALE_JOBS))
    (out / "perf.json").write_text(json.dumps(results, indent=2, default=float))
    markdown = to_markdown(results)
    (out / "perf.md").write_text(markdown)
    print(markdown)
    print(f"written: {out / 'perf.md'}, {out / 'perf.json'}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/perf")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--arch", choices=("tiny", "sd15", "sd21"), default="tiny")
    parser.add_argument("--only", nargs="+", default=None, help=f"sections to run (default all): {SECTIONS}")
    parser.add_argument("--scale-jobs", nargs="+", type=int, default=None, help="sizes of the scale section")
    sys.exit(perf_main(parser.parse_args()))
