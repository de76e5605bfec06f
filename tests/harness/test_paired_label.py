"""Paired differences against a method label (`clic-bench report --reference "clic/paper no_att"`): variants of one
method are paired with each other, with intervals and tests computed by hand here; a method reference keeps its
table; a reference the run does not have is one line; the ablation section pairs each variant with the plain label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import store
from harness.analyse.bootstrap import bootstrap_ci
from harness.analyse.paired import PAIRED_COLUMNS, paired_differences, unknown_reference
from harness.analyse.report import with_variants, write_report
from harness.cli import main
from harness.errors import UsageError

CONTROL = "clic/paper lr=1e-12 steps=1"
# (method, preset, variant): the paper's entry, the no-learning control, the ablation and another method
LABELS = (("clic", "paper", ""), ("clic", "paper", "lr=1e-12 steps=1"), ("clic", "paper", "no_att"))
OTHER = ("cut_paste", "default", "")


def row(method: str, preset: str, variant: str, pair: int, seed: int, metric: str, value: float) -> dict:
    label = f"{method}/{preset}" + (f" {variant}" if variant else "")
    return {
        "job_id": f"{label}-{pair}-{seed}".replace("/", "-").replace(" ", "_"),
        "task": "transfer",
        "pair_id": f"p{pair}",
        "category": "furniture",
        "method": method,
        "preset": preset,
        "label": label,
        "variant": variant,
        "seed": seed,
        "sweep": "{}",
        "object_word": "chair",
        "metric": metric,
        "value": value,
        "higher_is_better": True,
        "metric_scale": "raw",
        "metric_weights": "none",
        "weights_label": "tiny-world",
        "status": "ok",
    }


def values_table(n_pairs: int, n_seeds: int, seed: int = 0) -> dict[tuple[str, str, str], np.ndarray]:
    """(method, preset, variant) -> values [pair, seed] of one metric, each label shifted by its own amount."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.4, (n_pairs, n_seeds))
    shifts = {LABELS[0]: 0.08, LABELS[1]: 0.0, LABELS[2]: 0.05, OTHER: -0.02}
    return {key: base + shift + rng.normal(0, 0.03, base.shape) for key, shift in shifts.items()}


def results(
    values: dict[tuple[str, str, str], np.ndarray], metrics: tuple[str, ...] = ("pattern_fidelity",)
) -> pd.DataFrame:
    rows = [
        row(*key, pair, seed, metric, float(table[pair, seed]) + 0.1 * k)
        for key, table in values.items()
        for k, metric in enumerate(metrics)
        for pair in range(table.shape[0])
        for seed in range(table.shape[1])
    ]
    return with_variants(pd.DataFrame(rows))  # as the report reads them: "paper no_att" is its own preset


def test_a_label_reference_pairs_variants_of_its_method_and_the_interval_is_the_hand_bootstrap() -> None:
    values = values_table(n_pairs=8, n_seeds=1)
    table = paired_differences(results(values), reference=CONTROL)
    assert list(table.columns) == list(PAIRED_COLUMNS)
    shown = {f"{m}/{p}": (r, rp) for m, p, r, rp in table[["method", "preset", "reference", "reference_preset"]].values}
    assert shown == {
        "clic/paper": ("clic", "paper lr=1e-12 steps=1"),
        "clic/paper no_att": ("clic", "paper lr=1e-12 steps=1"),
        "cut_paste/default": ("clic", "paper lr=1e-12 steps=1"),
    }
    paper = table[table["preset"].eq("paper")].iloc[0]
    diffs = (values[LABELS[0]] - values[LABELS[1]])[:, 0]  # pairs p0..p7: their text order is their index order
    assert paper["n"] == paper["n_pairs"] == 8
    assert paper["mean_difference"] == pytest.approx(diffs.mean())
    # The nested bootstrap with one seed per pair, written out: 2000 draws of 8 pairs with replacement (seed 0),
    # the mean of each draw, the 2.5th and 97.5th percentiles.
    draws = np.random.default_rng(0).integers(0, 8, size=(2000, 8))
    low, high = np.percentile(diffs[draws].mean(axis=1), [2.5, 97.5])
    assert (paper["ci_low"], paper["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert paper["test"] == "wilcoxon" and paper["p_value"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert low > 0, "the transfer that learned beats the control with an interval that excludes zero"


def test_label_reference_with_seeds_nested_and_holm_per_comparison() -> None:
    values = values_table(n_pairs=6, n_seeds=2, seed=3)
    metrics = ("pattern_fidelity", "psnr_outside")
    table = paired_differences(results(values, metrics), reference=CONTROL)
    no_att = table[table["preset"].eq("paper no_att")].set_index("metric")
    diffs = (values[LABELS[2]] - values[LABELS[1]]).reshape(-1)  # per (pair, seed), pair-major like the pair ids
    pairs = np.repeat([f"p{i}" for i in range(6)], 2)
    row_ = no_att.loc["pattern_fidelity"]
    assert row_["n"] == 12 and row_["n_pairs"] == 6
    assert row_["mean_difference"] == pytest.approx(diffs.mean())
    expected = bootstrap_ci(diffs, clusters=pairs, nested=True)
    assert (row_["ci_low"], row_["ci_high"]) == pytest.approx(expected, abs=1e-12)
    per_pair = diffs.reshape(6, 2).mean(axis=1)
    p = stats.wilcoxon(per_pair).pvalue
    assert row_["p_value"] == pytest.approx(p)
    # both metrics differ by the same per-pair amounts (a constant offset per metric): one family of two tests
    assert list(no_att["p_holm"]) == pytest.approx([min(1.0, 2 * p)] * 2)


def test_a_method_reference_keeps_its_table() -> None:
    """`--reference clic`: every other method against each clic label; variants of clic are never paired with each
    other, and a label reference gives the same row for a comparison both make."""
    frame = results(values_table(n_pairs=5, n_seeds=2))
    by_method = paired_differences(frame, reference="clic")
    assert set(by_method["method"]) == {"cut_paste"}
    assert set(by_method["reference"]) == {"clic"}
    assert set(by_method["reference_preset"]) == {"paper", "paper lr=1e-12 steps=1", "paper no_att"}
    by_label = paired_differences(frame, reference=CONTROL)
    one = by_label[by_label["method"].eq("cut_paste")].reset_index(drop=True)
    same = by_method[by_method["reference_preset"].eq("paper lr=1e-12 steps=1")].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, same)


def test_an_unknown_reference_is_one_line_naming_the_methods_and_labels() -> None:
    frame = results(values_table(n_pairs=3, n_seeds=1))
    assert paired_differences(frame, reference="clic/paper no_such").empty
    assert unknown_reference(frame, "clic") is None and unknown_reference(frame, CONTROL) is None
    line = unknown_reference(frame, "clic/paper no_such")
    assert line is not None and "\n" not in line
    assert "methods: clic, cut_paste" in line and f'"{CONTROL}"' in line and '"clic/paper no_att"' in line


def write_run(run_dir: Path, frame: pd.DataFrame) -> Path:
    """A run folder: each job's rows, and the plan's method runs in the suite's order (run.json)."""
    for job_id, rows in frame.drop(columns=["base_preset"]).assign(preset=frame["base_preset"]).groupby("job_id"):
        store.write_job_results(run_dir, str(job_id), rows.to_dict("records"))
    methods = [
        {"label": f"{m}/{p}" + (f" {v}" if v else ""), "method": m, "preset": p, "variant": v} for m, p, v in LABELS
    ]
    store.write_run_record(run_dir, {"suite": {"name": "world"}, "plan": {"methods": methods}})
    return run_dir


def test_report_ablation_section_pairs_variants_with_the_plain_label_and_unknown_reference_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {key: table for key, table in values_table(n_pairs=4, n_seeds=1).items() if key != OTHER}
    run_dir = write_run(tmp_path / "run", results(values))
    index = write_report(run_dir)
    ablation = pd.read_csv(index.parent / "tables" / "ablations_paired.csv", keep_default_na=False)
    assert set(ablation["preset"]) == {"paper lr=1e-12 steps=1", "paper no_att"}
    assert set(ablation["reference_preset"]) == {"paper"}
    no_att = ablation[ablation["preset"].eq("paper no_att")].iloc[0]
    assert no_att["mean_difference"] == pytest.approx((values[LABELS[2]] - values[LABELS[0]]).mean())
    page = index.read_text()
    assert "Paired differences (variant − clic/paper)" in page[page.index('id="ablations"') :]
    assert "### Ablations paired against clic/paper" in (index.parent / "summary.md").read_text()
    assert pd.read_csv(index.parent / "tables" / "paired_differences.csv").empty  # one method: nothing by method

    before = index.read_text()
    with pytest.raises(UsageError, match="neither a method nor a method label"):
        write_report(run_dir, reference="clic/paper no_such")
    assert index.read_text() == before, "the last report stays"
    assert main(["report", str(run_dir), "--reference", "clic/paper no_such"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clic-bench: error: --reference 'clic/paper no_such'")
    assert main(["report", str(run_dir), "--reference", CONTROL]) == 0
    by_label = pd.read_csv(index.parent / "tables" / "paired_differences.csv", keep_default_na=False)
    assert set(by_label["preset"]) == {"paper", "paper no_att"}
