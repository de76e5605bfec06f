"""Seconds per learning step of every registered method that learns with a model (tiny, 64 px).

`python -m benchmarks.perf.methods [--steps N]` prints a Markdown table; each method learns the same
source from the shipped furniture set for N steps after 2 warm-up steps, in one process, one after another.
"""

from __future__ import annotations

import argparse
import time

import torch


def seconds_per_step(steps: int = 10) -> list[tuple[str, str, float]]:
    from clic.learn import ConceptSource
    from clic.methods import available_methods, method_class
    from clic.models import load_components

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 64, 64, generator=generator) * 2 - 1
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1
    rows = []
    for name in available_methods():
        method = method_class(name)()
        if not method.needs_model or "learn" not in method.tasks:
            continue
        model = "tiny-inpaint" if method.needs_inpainting else "tiny"
        timings = {}
        for count in (2, 2 + steps):  # the difference removes set-up and warm-up
            components = load_components(model)
            overrides = _steps_override(method, count)
            started = time.perf_counter()
            method.learn(components, ConceptSource(image, mask, "chair"), overrides=overrides, progress=False)
            timings[count] = time.perf_counter() - started
        rows.append((name, method.default_preset, (timings[2 + steps] - timings[2]) / steps))
    return rows


def _steps_override(method, count: int) -> dict:
    """``count`` optimizer steps, split over a multi-phase/stage method's phases in its default proportions."""
    config = method.learn_config()
    if getattr(config, "phases", None):
        total = sum(p.steps for p in config.phases)
        phases = [{**p.__dict__, "steps": max(1, round(count * p.steps / total))} for p in config.phases]
        return {"phases": phases}
    if hasattr(config, "stage_one_steps"):  # SingleInsert: encoder stage, then encoder + LoRA stage
        total = config.stage_one_steps + config.stage_two_steps
        first = max(1, round(count * config.stage_one_steps / total))
        return {"stage_one_steps": first, "stage_two_steps": max(1, count - first)}
    return {"steps": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print("| method | preset | seconds per learning step (tiny, 64 px) |\n|---|---|---|")
    for name, preset, seconds in seconds_per_step(args.steps):
        print(f"| {name} | {preset} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
