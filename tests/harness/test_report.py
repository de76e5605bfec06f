"""The static report on a fake run folder: self-contained HTML, images on disk, plots, banner, failures."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness import store
from harness.analyse.aggregate import TINY_RANDOM_NOTE
from harness.analyse.report import report_main, write_report

SIZE = 32
METHODS = (("clic", "paper"), ("custom_diffusion", "default"))
PAIRS = (("p0", "furniture"), ("p1", "furniture"), ("p2", "jewelry"))


def save_png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path.name


def random_image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


def square_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    return mask


def build_manifest(root: Path, rng: np.random.Generator) -> Path:
    rows = []
    for pair_id, category in PAIRS:
        rows.append(
            {
                "pair_id": pair_id,
                "category": category,
                "source_object": "chair",
                "target_object": "chair",
                "source_image": "images/" + save_png(root / "images" / f"{pair_id}-src.png", random_image(rng)),
                "source_mask": "images/" + save_png(root / "images" / f"{pair_id}-src-mask.png", square_mask()),
                "target_image": "images/" + save_png(root / "images" / f"{pair_id}-tgt.png", random_image(rng)),
                "target_mask": "images/" + save_png(root / "images" / f"{pair_id}-tgt-mask.png", square_mask()),
            }
        )
    path = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def record_pairs(run_dir: Path, manifest: Path) -> None:
    """What the runner records: the manifest's rows with their paths resolved (RUN/pairs.parquet)."""
    rows = pd.read_parquet(manifest).to_dict("records")
    store.write_pairs(
        run_dir,
        [{**row, **{k: str(manifest.parent / row[k]) for k in row if k.endswith(("image", "mask"))}} for row in rows],
    )


@pytest.fixture()
def fake_run(tmp_path: Path) -> Path:
    """A run with 2 methods × 3 pairs × 2 seeds, artifacts, loss curves, one failed job and a manifest."""
    rng = np.random.default_rng(0)
    suite_dir = tmp_path / "suite"
    manifest = build_manifest(suite_dir / "data", rng)
    (suite_dir / "smoke.yaml").write_text("name: smoke\n")
    run_dir = tmp_path / "run"
    record_pairs(run_dir, manifest)
    store.write_run_record(
        run_dir,
        {
            "suite": {"name": "smoke", "path": str(suite_dir / "smoke.yaml"), "manifest": "data/manifest.parquet"},
            "versions": {"torch": "2.14.1"},
            "host": "laptop",
            "start": "t0",
            "end": "t1",
            "counts": {"jobs": 12},
        },
    )
    for method, preset in METHODS:
        for pair_id, category in PAIRS:
            for seed in (0, 1):
                job_id = f"{method}-{pair_id}-{seed}"
                concept_id = f"{method}-{pair_id}-{seed}-concept"
                steps = np.arange(20)
                losses = pd.DataFrame(
                    {
                        "step": steps,
                        "t": rng.integers(0, 1000, 20),
                        "total": 1 / (1 + steps),
                        "l_con": 0.5 / (1 + steps),
                    }
                )
                (run_dir / "concepts" / concept_id).mkdir(parents=True)
                losses.to_csv(run_dir / "concepts" / concept_id / "losses.csv", index=False)
                base = {
                    "run_id": "run",
                    "job_id": job_id,
                    "concept_id": concept_id,
                    "task": "transfer",
                    "pair_id": pair_id,
                    "category": category,
                    "method": method,
                    "preset": preset,
                    "seed": seed,
                    "settings": json.dumps({"t_start": 10, "eta": 0.5}),
                    "t_start": 10,
                    "eta": 0.5,
                    "object_word": "chair",
                    "metric_version": "1",
                    "metric_scale": "raw",
                    "metric_weights": "tiny-random",
                    "model_id": "tiny",
                    "weights_hash": "abc123",
                    "weights_label": "tiny-random",
                    "code_version": "v1",
                    "higher_is_better": None,
                }
                if method == "custom_diffusion" and pair_id == "p2" and seed == 1:
                    store.write_job_results(
                        run_dir, job_id, [{**base, "status": "failed", "error": "RuntimeError: out of memory"}]
                    )
                    continue
                artifacts = run_dir / "artifacts" / job_id
                save_png(artifacts / "edited.png", random_image(rng))
                save_png(artifacts / "attention.png", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
                paths = {
                    "artifact_image": f"artifacts/{job_id}/edited.png",
                    "artifact_attention": f"artifacts/{job_id}/attention.png",
                    "artifact_losses": f"concepts/{concept_id}/losses.csv",
                }
                metrics = {
                    "clip_t": rng.uniform(0.2, 0.3),
                    "lpips_outside": rng.uniform(0.0, 0.2),
                    "mask_intersection": 100.0,
                    "mask_union": 150.0 + seed,
                }
                store.write_job_results(
                    run_dir,
                    job_id,
                    [
                        {
                            **base,
                            **paths,
                            "status": "ok",
                            "metric": name,
                            "value": value,
                            "higher_is_better": name != "lpips_outside",
                        }
                        for name, value in metrics.items()
                    ],
                )
    return run_dir


def test_report_is_self_contained_and_complete(fake_run: Path) -> None:
    index = write_report(fake_run)
    assert index == fake_run / "report" / "index.html"
    page = index.read_text()

    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links, "the page references its images and tables"
    assert not [link for link in links if link.startswith(("http://", "https://", "//"))]
    images = re.findall(r'<img src="([^"]*)"', page)
    assert images and all((index.parent / src).is_file() for src in images)
    assert any("-source.png" in src for src in images), "source with mask outline from the manifest"
    assert any("attention" in src for src in images)
    assert any(src.startswith("plots/losses-") for src in images)

    assert (index.parent / "summary.md").is_file()
    assert "mask_iou_pooled" in (index.parent / "summary.md").read_text()
    assert (index.parent / "plots" / "metric-clip_t.png").is_file()
    assert (index.parent / "plots" / "metric-clip_t.svg").is_file()
    assert (index.parent / "tables" / "summary.csv").is_file()

    assert TINY_RANDOM_NOTE in page
    failures = page[page.index('id="failures"') :]
    assert "custom_diffusion-p2-1" in failures and "out of memory" in failures
    assert 'id="cat-jewelry"' in page and 'id="method-clic-paper"' in page
    provenance = page[page.index('id="provenance"') :]
    provenance = provenance[: provenance.index("<h2", 1)]
    assert "clic --preset paper: settings and sources" in provenance and "learn.terms.con" in provenance


def test_report_reads_the_recorded_pairs_not_the_manifest(
    fake_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sources come from RUN/pairs.parquet: a suite whose manifest moved still has its grids; a run folder
    without recorded pairs shows its outputs only."""
    run_info = store.read_run_record(fake_run)
    run_info["suite"]["manifest"] = "missing/manifest.parquet"
    store.write_run_record(fake_run, run_info)
    out = tmp_path / "elsewhere"
    assert report_main(argparse.Namespace(run=str(fake_run), out=str(out), reference="clic")) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    images = re.findall(r'<img src="([^"]*)"', (out / "index.html").read_text())
    assert any("-source.png" in src for src in images)
    (fake_run / store.PAIRS_FILE).unlink()
    assert report_main(argparse.Namespace(run=str(fake_run), out=str(tmp_path / "bare"), reference="clic")) == 0
    images = re.findall(r'<img src="([^"]*)"', (tmp_path / "bare" / "index.html").read_text())
    assert not any("-source.png" in src for src in images)
    assert any("-image.png" in src for src in images)


def test_attention_column_is_decided_from_the_run_record_without_importing_the_method() -> None:
    from harness.analyse.grids import has_attention

    # a method the run record lists without a model (cut-and-paste) records no attention map; one with a model does;
    # the record answers even for a method not installed here (no import is tried)
    assert has_attention("not_installed_here", {"not_installed_here": None}) is False
    assert has_attention("not_installed_here", {"not_installed_here": {"model_id": "tiny"}}) is True
    assert has_attention("not_installed_here", {}) is True  # unknown: shown as recorded
    assert has_attention("cut_paste") is False and has_attention("clic") is True  # no record: the class says
