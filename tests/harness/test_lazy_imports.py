"""What a process imports decides how long it takes to start (issue 18, cold start).

Importing diffusers imports every model class it ships, peft and ``torch._dynamo``: seconds per process.
Planning a run (the driver, preflight) and methods without a diffusion model never need it; a worker imports
it when it builds or loads a model. Each check runs in a fresh interpreter, since this test process has
imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("diffusers", "transformers", "peft", "torchvision", "torch._dynamo", "open_clip")


def _imported_after(code: str, cache: Path) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which of HEAVY it imported (the last line it prints is JSON)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIC_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_method_library_imports_no_diffusion_stack(tmp_path: Path) -> None:
    modules = [
        "clic.methods." + name
        for name in (
            "clic",
            "cut_paste",
            "custom_diffusion",
            "break_a_scene",
            "realfill",
            "textual_inversion",
            "em_masks",
            "concept_express",
            "single_insert",
        )
    ]
    modules += [
        "clic.learn",
        "clic.transfer",
        "clic.generate",
        "clic.match",
        "clic.concept",
        "clic.attention",
        "clic.cli",
        "clic.architectures",
        "clic.models",
    ]
    imported = _imported_after("\n".join(f"import {m}" for m in modules), tmp_path)
    assert not any(imported.values()), imported


def test_tiny_description_is_built_once_then_recalled_without_diffusers(tmp_path: Path) -> None:
    describe = "from clic.models import describe_model\nprint(describe_model('tiny').weights_hash)"
    first = subprocess.run(
        [sys.executable, "-c", describe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CLIC_CACHE": str(tmp_path)},
    )
    assert first.returncode == 0, first.stderr[-2000:]
    remembered = list((tmp_path / "tiny-descriptions").glob("tiny-*.json"))
    assert len(remembered) == 1
    assert json.loads(remembered[0].read_text())["weights_hash"] == first.stdout.split()[-1]
    # The second process reads the description: the same hash, and diffusers is never imported.
    imported = _imported_after(describe, tmp_path)
    assert not imported["diffusers"] and not imported["torch._dynamo"], imported
    from clic.models import build_tiny

    assert build_tiny("tiny").weights_hash == first.stdout.split()[-1]  # what a worker builds: the planned weights


def test_damaged_tiny_description_is_rebuilt(tmp_path: Path) -> None:
    describe = "from clic.models import describe_model\nprint(describe_model('tiny').weights_hash)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIC_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", describe], check=True, capture_output=True, env=env, cwd=ROOT, timeout=300)
    [remembered] = (tmp_path / "tiny-descriptions").glob("tiny-*.json")
    good = remembered.read_text()
    remembered.write_text(good[: len(good) // 2])  # truncated
    again = subprocess.run(
        [sys.executable, "-c", describe], check=True, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert again.stdout.split()[-1] == json.loads(good)["weights_hash"]
    assert remembered.read_text() == good


def test_preflight_of_a_tiny_suite_imports_no_diffusion_stack(tmp_path: Path) -> None:
    from clic.models import describe_model

    describe_model("tiny")  # as any earlier run on this machine has: the description is remembered
    cache = Path(os.environ.get("CLIC_CACHE", Path.home() / ".cache" / "clic"))
    suite = tmp_path / "suite.json"
    suite.write_text(
        json.dumps(
            {
                "name": "lazy",
                "model": "tiny",
                "manifests": [str(ROOT / "manifests" / "furniture" / "manifest.parquet")],
                "limit_pairs": 1,
                "methods": [{"name": "clic"}, {"name": "cut_paste"}],
                "seeds": [0],
                "transfer": {"t_start": [2], "steps": 10},
                "metrics": ["ssim_psnr", "mask_iou"],
            }
        )
    )
    code = (
        f"from harness.plan.preflight import preflight\n"
        f"checked = preflight({str(suite)!r}, {str(tmp_path / 'run')!r}, allow_random_metrics=False)\n"
        f"assert checked.pairs, 'no pairs'"
    )
    imported = _imported_after(code, cache)
    assert not any(imported[m] for m in ("diffusers", "transformers", "peft", "torch._dynamo")), imported


def test_cut_and_paste_job_runs_without_diffusers(tmp_path: Path) -> None:
    code = """
import torch
from clic.learn import ConceptSource
from clic.methods import method_class
method = method_class("cut_paste")()
image, mask = torch.rand(3, 64, 64) * 2 - 1, torch.zeros(1, 64, 64)
mask[:, 16:48, 16:48] = 1
concept = method.learn(None, ConceptSource(image, mask, "chair"), progress=False)
out = method.transfer(None, concept, image, mask[0], "chair")
assert out.image.shape[-1] == 64
"""
    imported = _imported_after(code, tmp_path)
    assert not any(imported[m] for m in ("diffusers", "transformers", "peft", "torch._dynamo")), imported


def test_worker_refuses_weights_other_than_planned() -> None:
    from clic.models import describe_model
    from harness.execute.worker_models import _load_planned
    from harness.plan.jobs import ModelInfo

    planned = describe_model("tiny")
    assert (
        _load_planned(ModelInfo("tiny", planned.weights_hash, planned.weights_label), "cpu").weights_hash
        == planned.weights_hash
    )
    with pytest.raises(RuntimeError, match="not the ones the run was planned with"):
        _load_planned(ModelInfo("tiny", "0" * 16, planned.weights_label), "cpu")


def test_metric_actor_scoring_ssim_imports_no_model_stack(tmp_path: Path) -> None:
    """The metric actor loads what its metrics need: SSIM/PSNR and mask IoU need no CLIP, LPIPS or diffusers."""
    code = """
from harness.execute.scorer import MetricScorer
from harness.metrics import metric_target
MetricScorer({name: metric_target(name) for name in ("ssim_psnr", "mask_iou")}, False, {})
"""
    imported = _imported_after(code, tmp_path)
    assert not any(imported.values()), imported
