"""Tables, bootstrap CIs, paired differences and the regression gate on small hand-made result frames."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.analyse.aggregate import (
    TINY_RANDOM_NOTE,
    bootstrap_ci,
    summary_table,
    to_markdown,
    write_tables,
)
from harness.analyse.compare_page import compare_main
from harness.analyse.paired import compare_runs, paired_differences


def declared_direction(value_name: str | None) -> bool | None:
    """Whether higher is better for a value, as the metric that emits it declares (recorded in every row)."""
    from harness.metrics import REGISTRY, metric_class
    from harness.metrics.base import declaration

    found = {v: higher for name in REGISTRY for v, higher in declaration(metric_class(name)).values.items()}
    return found.get(value_name) if value_name else None


def result_row(job_id: str, metric: str | None, value: float, **fields: object) -> dict:
    """One tidy result row with sensible defaults for every field the aggregate code reads."""
    row = {
        "run_id": "run",
        "job_id": job_id,
        "concept_id": "c-" + job_id,
        "task": "transfer",
        "pair_id": "p0",
        "category": "furniture",
        "method": "clic",
        "preset": "paper",
        "seed": 0,
        "settings": json.dumps({"t_start": 10, "eta": 0.5}, sort_keys=True),
        "t_start": 10,
        "eta": 0.5,
        "object_word": "chair",
        "metric": metric,
        "value": value,
        "higher_is_better": declared_direction(metric),
        "metric_version": "1",
        "metric_scale": "raw",
        "metric_weights": "tiny-random",
        "model_id": "tiny",
        "weights_hash": "abc",
        "weights_label": "tiny-random",
        "code_version": "v1",
        "status": "ok",
        "error": None,
        "artifact_image": None,
        "artifact_attention": None,
        "artifact_mask": None,
        "artifact_losses": None,
        "learn_seconds": 1.0,
        "task_seconds": 1.0,
        "metric_seconds": 0.1,
        "finished_at": "2025-01-01T00:00:00",
    }
    row.update(fields)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_bootstrap_ci_contains_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.5, 0.2, 10), rng.normal(0.5, 0.2, 1000)
    small_low, small_high = bootstrap_ci(small)
    large_low, large_high = bootstrap_ci(large)
    assert small_low <= small.mean() <= small_high
    assert large_low <= large.mean() <= large_high
    assert (large_high - large_low) < (small_high - small_low) / 3
    assert bootstrap_ci(small) == bootstrap_ci(small), "seeded: the same data gives the same CI"


def test_summary_table_has_all_category_and_pooled_iou_by_hand() -> None:
    # Two jobs: intersections 10 and 30, unions 20 and 40 → pooled 40/60, mean per-job IoU (0.5 + 0.75)/2.
    rows = []
    for job, category, inter, union in (("j1", "furniture", 10.0, 20.0), ("j2", "jewelry", 30.0, 40.0)):
        rows += [
            result_row(job, "mask_intersection", inter, category=category),
            result_row(job, "mask_union", union, category=category),
            result_row(job, "mask_iou", inter / union, category=category),
        ]
    table = summary_table(frame(rows)).set_index(["method", "category", "metric"])
    assert table.loc[("clic", "all", "mask_iou_pooled"), "mean"] == pytest.approx(40 / 60)
    assert table.loc[("clic", "all", "mask_iou"), "mean"] == pytest.approx(0.625)
    assert table.loc[("clic", "furniture", "mask_iou_pooled"), "mean"] == pytest.approx(0.5)
    assert table.loc[("clic", "all", "mask_iou"), "n"] == 2
    assert set(table["weights"]) == {"tiny-random + tiny-random"}


def test_failed_jobs_are_counted_not_averaged() -> None:
    rows = [
        result_row("ok1", "clip_t", 0.3),
        result_row("ok2", "clip_t", 0.5),
        result_row("bad", None, float("nan"), status="failed", error="CUDA out of memory"),
    ]
    table = summary_table(frame(rows))
    row = table[(table["category"] == "furniture") & (table["metric"] == "clip_t")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.4)
    assert row["n_failed"] == 1


def test_paired_difference_matches_scipy() -> None:  # eight pairs, one seed each
    reference = [0.50, 0.61, 0.42, 0.70, 0.55, 0.48, 0.66, 0.59]
    other = [0.45, 0.60, 0.30, 0.62, 0.56, 0.40, 0.60, 0.50]
    rows = []
    for seed, (ref_value, other_value) in enumerate(zip(reference, other)):
        rows.append(result_row(f"r{seed}", "clip_t", ref_value, pair_id=f"p{seed}"))
        rows.append(
            result_row(
                f"o{seed}", "clip_t", other_value, pair_id=f"p{seed}", method="custom_diffusion", preset="default"
            )
        )
    table = paired_differences(frame(rows), reference="clic")
    assert len(table) == 1
    row = table.iloc[0]
    diffs = np.array(other) - np.array(reference)
    assert row["n"] == 8
    assert row["mean_difference"] == pytest.approx(diffs.mean())
    assert row["p_value"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert row["test"] == "wilcoxon"
    assert row["ci_low"] <= diffs.mean() <= row["ci_high"]


def test_paired_difference_falls_back_to_t_test_for_few_pairs() -> None:
    rows = []
    for seed, (ref_value, other_value) in enumerate([(0.5, 0.4), (0.6, 0.45), (0.7, 0.58)]):
        rows.append(result_row(f"r{seed}", "clip_t", ref_value, pair_id=f"p{seed}"))
        rows.append(result_row(f"o{seed}", "clip_t", other_value, pair_id=f"p{seed}", method="realfill"))
    row = paired_differences(frame(rows)).iloc[0]
    assert row["test"] == "t-test"
    assert row["p_value"] == pytest.approx(stats.ttest_rel([0.4, 0.45, 0.58], [0.5, 0.6, 0.7]).pvalue)


def two_runs(metric: str, shift: float, n: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run A and run B with the same jobs; B's values are A's plus `shift` (plus a little noise)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, n)
    noise = rng.normal(0, 0.002, n)
    run_a = frame([result_row(f"a{i}", metric, base[i], seed=i, pair_id=f"p{i}") for i in range(n)])
    run_b = frame(
        [
            result_row(
                f"b{i}", metric, base[i] + shift + noise[i], seed=i, pair_id=f"p{i}", code_version="v2", run_id="run-b"
            )
            for i in range(n)
        ]
    )
    return run_a, run_b


def write_run(run_dir: Path, results: pd.DataFrame) -> Path:
    (run_dir / "results").mkdir(parents=True)
    results.to_parquet(run_dir / "results" / "part-0.parquet")
    return run_dir


def compare_args(run_a: Path, run_b: Path, **overrides: object) -> argparse.Namespace:
    values = {"run_a": str(run_a), "run_b": str(run_b), "metric": None, "max_drop": 0.0, "alpha": 0.05}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_compare_gate_fails_on_significant_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_a, run_b = two_runs("clip_t", shift=-0.05)
    a, b = write_run(tmp_path / "a", run_a), write_run(tmp_path / "b", run_b)
    assert compare_main(compare_args(a, b, max_drop=0.01)) == 1
    out = capsys.readouterr().out
    assert TINY_RANDOM_NOTE in out
    assert "| clip_t | clic/paper | 12 |" in out and "fail" in out


def test_compare_gate_passes_within_max_drop(tmp_path: Path) -> None:
    run_a, run_b = two_runs("clip_t", shift=-0.05)
    a, b = write_run(tmp_path / "a", run_a), write_run(tmp_path / "b", run_b)
    assert compare_main(compare_args(a, b, max_drop=0.1)) == 0


def test_compare_respects_lower_is_better() -> None:
    # lpips_outside going up is a drop; going down is an improvement.
    worse_a, worse_b = two_runs("lpips_outside", shift=+0.05)
    assert compare_runs(worse_a, worse_b).iloc[0]["verdict"] == "fail"
    better_a, better_b = two_runs("lpips_outside", shift=-0.05)
    assert compare_runs(better_a, better_b).iloc[0]["verdict"] == "better"
    higher_a, higher_b = two_runs("clip_t", shift=+0.05)
    assert compare_runs(higher_a, higher_b).iloc[0]["verdict"] == "better"


def test_compare_gates_only_the_named_metrics(tmp_path: Path) -> None:
    drop_a, drop_b = two_runs("clip_t", shift=-0.05)
    same_a, same_b = two_runs("ssim_outside", shift=0.0)
    a = write_run(tmp_path / "a", pd.concat([drop_a, same_a.assign(job_id="s" + same_a["job_id"])]))
    b = write_run(tmp_path / "b", pd.concat([drop_b, same_b.assign(job_id="s" + same_b["job_id"])]))
    assert compare_main(compare_args(a, b, metric=["ssim_outside"])) == 0
    assert compare_main(compare_args(a, b)) == 1


def test_compare_without_results_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "results").mkdir(parents=True)
    run_a, _ = two_runs("clip_t", shift=0.0)
    a = write_run(tmp_path / "a", run_a)
    from harness.cli import main as bench_main

    assert bench_main(["compare", str(a), str(tmp_path / "empty")]) == 2  # issue 27: on stderr, like every error
    captured = capsys.readouterr()
    assert "no results" in captured.err and captured.err.startswith("clic-bench: error: ") and not captured.out


def test_tiny_random_line_only_for_tiny_weights(tmp_path: Path) -> None:
    rows = [result_row("j1", "clip_t", 0.3), result_row("j2", "clip_t", 0.4)]
    table = summary_table(frame(rows))
    assert to_markdown(table).startswith(TINY_RANDOM_NOTE)
    real = summary_table(
        frame(rows).assign(weights_label="CompVis/stable-diffusion-v1-4", metric_weights="openai/clip-vit-base-patch32")
    )
    assert TINY_RANDOM_NOTE not in to_markdown(real)
    written = write_tables({"summary": table}, tmp_path)
    assert {p.name for p in written} == {"summary.md", "summary.csv", "summary.html"}
    assert TINY_RANDOM_NOTE in (tmp_path / "summary.html").read_text()


def test_one_bootstrap_for_means_pooled_ratios_and_clusters() -> None:
    from harness.analyse.bootstrap import bootstrap_ci as one_bootstrap
    from harness.analyse.study_scores import cluster_bootstrap_ci

    values = np.random.default_rng(3).uniform(0, 1, 15)
    plain = bootstrap_ci(values)
    assert plain == one_bootstrap(values, weights=np.ones(15)) == one_bootstrap(values, clusters=np.arange(15))
    assert cluster_bootstrap_ci(values, np.arange(15)) == plain
    # A pooled ratio Σa / Σb: with b = 2 everywhere it is half the mean, draw for draw.
    low, high = one_bootstrap(values, weights=np.full(15, 2.0))
    assert (low, high) == pytest.approx((plain[0] / 2, plain[1] / 2))


def test_summary_intervals_computed_in_threads_are_each_groups_own_seeded_bootstrap() -> None:
    # several groups (methods × metrics), each interval in its own thread: every one must be exactly the interval
    # of that group's values over its pairs with seeds nested, as if computed alone
    rng = np.random.default_rng(5)
    rows = [
        result_row(f"{method}-{pair}-{seed}", metric, float(rng.normal()), method=method, pair_id=f"p{pair}", seed=seed)
        for method in ("clic", "cut_paste")
        for metric in ("psnr_outside", "ssim_outside")
        for pair in range(6)
        for seed in range(1 + pair % 2)
    ]
    table = summary_table(frame(rows), by=("method", "metric"))
    assert len(table) == 4
    df = frame(rows)
    for record in table.itertuples(index=False):
        group = df[(df["method"] == record.method) & (df["metric"] == record.metric)]
        codes = pd.factorize(group["pair_id"], sort=True)[0]
        expected = bootstrap_ci(group["value"].to_numpy(), clusters=codes, nested=True)
        assert (record.ci_low, record.ci_high) == expected
