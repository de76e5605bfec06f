"""Preflight: what would certainly fail later is found before Ray starts, one line per problem, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_metric_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch-hub and Hugging Face caches: no real CLIP or AlexNet weights can be found."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/clip
    return tmp_path


def test_smoke_without_weights_or_flag_stops_before_ray_with_one_line_per_missing_file(
    no_metric_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ray_was_imported = "ray" in sys.modules
    run = tmp_path / "run"
    code = main(["run", str(ROOT / "benchmarks" / "smoke.yaml"), "--out", str(run), "--quiet"])
    errors = capsys.readouterr().err.splitlines()
    assert code == 2
    # smoke.yaml scores with lpips (AlexNet trunk) and four CLIP metrics sharing one checkpoint: two files.
    assert len(errors) == 2, errors
    assert all(line.startswith("clic-bench: error: metric ") for line in errors)
    assert "alexnet-owt-" in errors[0] and "metric lpips:" in errors[0]
    assert "ViT-B-32/openai" in errors[1] and "metric clip_image:" in errors[1]
    assert not run.exists()  # nothing written, no run folder left behind
    if not ray_was_imported:  # the structural reason it takes seconds: no cluster, no worker, no learning
        assert "ray" not in sys.modules


def test_every_problem_is_one_line_in_one_go(
    no_metric_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the run folder should go")
    (tmp_path / "broken.parquet").write_text("not parquet")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        json.dumps(
            {
                "name": "bad",
                "model": str(tmp_path / "no-such-model"),
                "manifest": str(tmp_path / "broken.parquet"),
                "methods": [{"name": "clic"}],
                "seeds": [0],
                "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
                "tasks": ["transfer"],
                "metrics": ["lpips", "ssim_psnr"],
            }
        )
    )
    assert main(["run", str(suite), "--out", str(blocked / "run"), "--quiet"]) == 2
    errors = capsys.readouterr().err
    lines = [line for line in errors.splitlines() if line.startswith("clic-bench: error: ")]
    assert len(lines) == 4, errors
    assert "broken.parquet" in lines[0]  # the manifest
    assert "no-such-model" in lines[1]  # the model
    assert "--out:" in lines[2] and "blocked is a file" in lines[2]  # the output folder
    assert "metric lpips:" in lines[3]  # the weights


def test_allow_random_metrics_silences_the_weight_check(no_metric_weights: Path) -> None:
    from harness.plan.preflight import missing_metric_weights
    from harness.plan.suite import load_suite

    suite = load_suite(ROOT / "benchmarks" / "smoke.yaml")
    assert len(missing_metric_weights(suite, allow_random_metrics=False)) == 2
    assert missing_metric_weights(suite, allow_random_metrics=True) == []


def test_inconsistent_settings_are_found_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        json.dumps(
            {
                "name": "short",
                "model": "tiny",
                "manifest": str(ROOT / "manifests" / "furniture" / "manifest.parquet"),
                "limit_pairs": 1,
                "methods": [{"name": "clic"}],
                "seeds": [0],
                "tasks": ["generate"],
                # A stage one the suite gives that does not fit its steps (a default one follows the steps: issue 27).
                "generate": {"objects": ["vase"], "steps": 2, "stage_one_steps": 5},
                "metrics": ["ssim_psnr"],
            }
        )
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "generate" in lines[0] and "stage_one_steps" in lines[0], lines
