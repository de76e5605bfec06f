"""`python -m benchmarks.perf.doctor`: what a user with a GPU runs first.

    python -m benchmarks.perf.doctor --model /path/to/sd-v1-5 [--device auto] [--resolution 512] [--steps 3]

1. the device found (``--device auto``: a visible GPU, else the CPU — then every check runs on the CPU and the
   table says so);
2. placement: one learning step with the model on that device under :class:`~benchmarks.perf.placement.DeviceAudit`
   (on a CPU-only machine the model goes to the data-less ``meta`` device instead, as ``tests/clic/test_placement.py``);
3. half precision: the same seeded learning steps in fp32, bf16 and fp16, largest relative loss difference;
4. CLiC's fused step at ``--resolution`` (default 512; on the CPU 128, because one 512 px step of SD 1.x takes
   minutes there): seconds per step (median after a warm-up step) and the job's peak memory (CUDA max allocated,
   or peak RSS on the CPU), beside the figures benchmarks/perf/README.md expects for SD 1.x at 512 px.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

# benchmarks/perf/README.md, "What to expect on a GPU (SD v1.4, 512 px)": seconds per CLiC step.
EXPECTED_SECONDS_PER_STEP = {
    "RTX 3090 (fp16, 40 % of peak)": 0.12,
    "A100 40 GB (bf16, 40 % of peak)": 0.027,
    "paper (RTX 3090, fp32, released code)": 0.36,
}


def _source(resolution: int):
    from clic.learn import ConceptSource

    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(resolution, resolution)
    mask[resolution // 8 : resolution // 2, resolution // 4 : 3 * resolution // 4] = 1
    return ConceptSource(torch.rand(3, resolution, resolution, generator=generator) * 2 - 1, mask, "chair")


def _learn(model: str, device: Any, dtype: str, resolution: int, steps: int, on_step=None):
    from clic.learn import learn_concept
    from clic.methods.base import get_method
    from clic.models import load_components

    method = get_method("clic")
    components = load_components(model, device=device, dtype=dtype)
    config = method.learn_config(None, {"steps": steps, "resolution": resolution})
    return learn_concept(
        components, _source(resolution), config, step_fn=method.training_step, progress=False, on_step=on_step
    )


def placement_check(model: str, device: torch.device, resolution: int) -> tuple[str, str]:
    from clic.methods.base import get_method
    from clic.models import load_components

    from .placement import DeviceAudit

    target = device if device.type != "cpu" else torch.device("meta")
    components = load_components(model).to(target)
    audit = DeviceAudit()
    with audit:
        get_method("clic").learn(
            components, _source(resolution), overrides={"steps": 1, "resolution": resolution}, progress=False
        )
    where = f"model on {target}" + (" (no GPU: the data-less meta device stands in)" if device.type == "cpu" else "")
    verdict = (
        "ok: no op mixed devices" if not audit.mixed else f"FAILED: {len(audit.mixed)} op(s), first {audit.mixed[0]}"
    )
    return where, f"{verdict} ({audit.ops} ops audited)"


def precision_check(model: str, device: torch.device, resolution: int, steps: int) -> dict[str, float]:
    reference = _learn(model, device, "fp32", resolution, steps).loss_log
    worst = {}
    for dtype in ("bf16", "fp16"):
        try:
            log = _learn(model, device, dtype, resolution, steps).loss_log
        except (RuntimeError, FloatingPointError) as err:  # e.g. a CPU without fp16 kernels
            worst[dtype] = float("nan")
            print(f"  {dtype}: {type(err).__name__}: {str(err).splitlines()[0]}")
            continue
        worst[dtype] = max(abs(a["total"] - b["total"]) / max(abs(a["total"]), 1e-12) for a, b in zip(reference, log))
    return worst


def step_timing(model: str, device: torch.device, dtype: str, resolution: int, steps: int) -> dict[str, float]:
    from clic.device import peak_memory_bytes, reset_peak_memory

    stamps: list[float] = []

    def on_step(_index: int, _values: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    reset_peak_memory(device)
    started = time.perf_counter()
    _learn(model, device, dtype, resolution, steps + 1, on_step)  # the first step warms up (allocations, caches)
    per_step = [b - a for a, b in zip(stamps, stamps[1:])] or [stamps[0] - started]
    return {"seconds_per_step": statistics.median(per_step), "peak_memory_gib": peak_memory_bytes(device) / 2**30}


def main(argv: list[str] | None = None) -> int:
    from clic.device import describe_device, resolve_device

    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.doctor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny, a diffusers folder (e.g. `clic models save-random`) or a cached HF id"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype", default=None, help="dtype of the timed step (default: bf16 on a GPU, fp32 on the CPU)"
    )
    parser.add_argument(
        "--resolution", type=int, default=None, help="side of the timed step (default 512; 128 on the CPU)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps and precision-check steps")
    parser.add_argument(
        "--check-resolution",
        type=int,
        default=None,
        help="side of the placement and precision checks (default: the model's smallest, 64 tiny / 128)",
    )
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    resolution = args.resolution or (128 if on_cpu else 512)
    check_resolution = args.check_resolution or (64 if args.model.startswith("tiny") else 128)
    dtype = args.dtype or ("fp32" if on_cpu else "bf16")
    print(f"device: {describe_device(device)}" + ("  — no GPU found: every check runs on the CPU" if on_cpu else ""))
    where, verdict = placement_check(args.model, device, check_resolution)
    print(f"placement ({where}): {verdict}")
    worst = precision_check(args.model, device, check_resolution, args.steps)
    timing = step_timing(args.model, device, dtype, resolution, args.steps)

    rows = [
        ("device", describe_device(device), ""),
        ("placement", verdict, where),
        *[
            (
                f"{name} vs fp32, max relative loss difference ({args.steps} steps, {check_resolution} px)",
                f"{value:.2e}",
                "< 1e-2 (tests/clic/test_precision.py states 1 %)",
            )
            for name, value in worst.items()
        ],
        (
            f"CLiC fused step, {resolution} px, {dtype}, s/step",
            f"{timing['seconds_per_step']:.3f}",
            "; ".join(f"{k}: {v:g}" for k, v in EXPECTED_SECONDS_PER_STEP.items()) + " (SD 1.x, 512 px)",
        ),
        (
            f"peak memory of the learning job, {resolution} px, {dtype}",
            f"{timing['peak_memory_gib']:.2f} GiB",
            "CUDA max allocated" if not on_cpu else "peak RSS of this process (CPU)",
        ),
    ]
    if on_cpu and resolution != 512:
        rows.append(
            (
                "note",
                f"timed at {resolution} px on the CPU",
                "512 px takes minutes per step here; pass --resolution 512",
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"\nmodel: {args.model}\n{'check'.ljust(width)} | measured | expected / note")
    for name, value, expected in rows:
        print(f"{name.ljust(width)} | {value} | {expected}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
