"""Every suite shipped in benchmarks/ reads with the real method registry: a change of bounds or config (e.g.
t_start counted from the start of the schedule) that makes one invalid fails here, not in a user's first run."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.plan.suite import load_suite

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUITES = sorted([*BENCHMARKS.glob("*.yaml"), *BENCHMARKS.glob("gpu/*.yaml")])


@pytest.mark.parametrize("path", SUITES, ids=lambda path: path.name)
def test_every_shipped_suite_reads(path: Path) -> None:
    suite = load_suite(path)
    assert suite.methods and suite.name == path.stem


def test_the_gpu_suites_run_the_paper_on_a_real_model() -> None:
    """benchmarks/gpu/: SD 1.4, bf16 where the method allows (Break-A-Scene original: fp32, its own suite), the
    presets' own step counts, GPU jobs packed by memory, real metric weights."""
    paper, original = (load_suite(BENCHMARKS / "gpu" / f"{name}.yaml") for name in ("paper", "break_a_scene_original"))
    assert paper.model == original.model == "CompVis/stable-diffusion-v1-4"
    assert (paper.dtype, original.dtype) == ("bf16", "fp32")
    assert all(not spec.learn for spec in paper.methods + original.methods)  # the papers' step counts
    assert paper.resources.num_gpus == 1 and paper.resources.gpu_memory_gib
    from harness.execute.packing import method_resources

    packed = method_resources(paper, 512)
    assert packed[("clic", "paper")]["num_gpus"] < 1 and packed[("cut_paste", "default")]["num_gpus"] == 0
    assert method_resources(original, 512)[("break_a_scene", "original")]["num_gpus"] == 0.5
