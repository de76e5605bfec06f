"""Peak memory of learning one concept: `clic learn` from the CLI vs the harness's learn worker, same model.

    python -m benchmarks.perf.memory_bench [--model DIR] [--resolution 128] [--steps 2] [--out runs/memory]

Without ``--model`` the SD 1.5 architecture with random weights is written first (`clic models save-random --arch
sd15`, ~4 GB, ~1 min). The CLI's figure is the peak RSS of a `python -m clic.cli learn` process; the harness's is
the learn job's own peak (``learn_peak_memory_mb`` in the result rows: peak RSS of the Ray worker from the job's
start, with the model already loaded by the warm-up), for a one-pair suite learning the same number of steps at
the same resolution. The target is harness ≤ 1.1 × CLI: a job borrows the worker's loaded model and puts back only
what it changed (clic.reuse) instead of deep-copying the UNet and text encoder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET_RATIO = 1.1


def cli_peak_mb(model: str, image: Path, mask: Path, resolution: int, steps: int, out: Path) -> float:
    """Peak RSS of a fresh `clic learn` process (measured by a parent that has no other child)."""
    command = [
        sys.executable,
        "-m",
        "clic.cli",
        "learn",
        "--model",
        model,
        "--image",
        str(image),
        "--mask",
        str(mask),
        "--object",
        "chair",
        "--steps",
        str(steps),
        "--resolution",
        str(resolution),
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        subprocess.run({command!r}, check=True, stdout=subprocess.DEVNULL)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    return int(result.stdout.split()[-1]) / 1024  # KiB on Linux


def harness_peak_mb(model: str, manifest: Path, resolution: int, steps: int, run_dir: Path) -> dict:
    import yaml

    from harness.execute.runner import run_suite
    from harness.store import read_results

    suite = {
        "name": "memory",
        "manifest": str(manifest),
        "model": model,
        "resolution": resolution,
        "methods": [{"name": "clic", "learn": {"steps": steps}}],
        "seeds": [0],
        "transfer": {"steps": 3, "t_start": [1], "eta": [0.0]},
        "match": {"enabled": False},
        "tasks": ["transfer"],
        "metrics": ["ssim_psnr"],
        "limit_pairs": 1,
        "device": "cpu",
        "resources": {"num_cpus": 2, "max_retries": 0},
    }
    suite_path = run_dir.parent / "memory-suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite))
    summary = run_suite(suite_path, run_dir, num_cpus=2, quiet=True)
    rows = read_results(run_dir)
    ok = rows[rows.status == "ok"]
    if ok.empty:
        raise RuntimeError(f"the harness run failed: {rows.error.dropna().tolist()[:1]}")
    return {
        "learn_peak_mb": float(ok.learn_peak_memory_mb.max()),
        "transfer_peak_mb": float(ok.peak_memory_mb.max()),
        "jobs": summary.total_jobs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.memory_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers folder (default: write the SD 1.5 architecture, random weights)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for the run, concept and report (default: a temp folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="clic-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from clic.architectures import save_random

        model = str(save_random("sd15", out / "sd15"))
    import pyarrow.parquet as pq

    manifest = REPO / "manifests" / "furniture" / "manifest.parquet"
    first = pq.read_table(manifest).slice(0, 1).to_pylist()[0]
    image, mask = (manifest.parent / first["source_image"], manifest.parent / first["source_mask"])
    cli = cli_peak_mb(model, image, mask, args.resolution, args.steps, out / "cli-concept")
    harness = harness_peak_mb(model, manifest, args.resolution, args.steps, out / "run")
    ratio = harness["learn_peak_mb"] / cli
    report = {
        "model": model,
        "resolution": args.resolution,
        "steps": args.steps,
        "cli_learn_peak_mb": round(cli, 1),
        "harness_learn_peak_mb": round(harness["learn_peak_mb"], 1),
        "harness_transfer_peak_mb": round(harness["transfer_peak_mb"], 1),
        "ratio": round(ratio, 3),
        "target": f"<= {TARGET_RATIO}",
        "met": ratio <= TARGET_RATIO,
    }
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    print("| measure | peak memory |\n|---|---|")
    print(f"| `clic learn` process (peak RSS) | {cli / 1024:.2f} GiB |")
    print(f"| harness learn job (worker peak RSS from the job's start) | {harness['learn_peak_mb'] / 1024:.2f} GiB |")
    print(f"| harness transfer job | {harness['transfer_peak_mb'] / 1024:.2f} GiB |")
    print(
        f"| ratio learn job / CLI | {ratio:.3f} (target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'}) |"
    )
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
