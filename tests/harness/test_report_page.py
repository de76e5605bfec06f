"""The report a researcher reads: a headline that wraps, no interval below 3 pairs in tables or figures, bounded
image grids with the expected image and scores, loss terms, the t_start trade-off, costs, short weights keys,
and the comparison page of two runs."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from harness import store  # noqa: E402
from harness.analyse import figures, grids  # noqa: E402
from harness.analyse.compare_page import compare_main, worst_pairs  # noqa: E402
from harness.analyse.costs import cost_table  # noqa: E402
from harness.analyse.headline import HTML_METRICS_PER_TABLE  # noqa: E402
from harness.analyse.report import with_variants, write_report  # noqa: E402

SIZE = 48
T_STARTS = (2, 4, 6)
# Ten metrics, more than one headline table holds; higher is better unless listed.
METRICS = (
    "pattern_fidelity",
    "pattern_leakage",
    "psnr_outside",
    "ssim_outside",
    "lpips_outside",
    "lpips_inside",
    "clip_i_roi",
    "clip_i_outside",
    "clip_t",
    "oracle_preservation",
)
LOWER_IS_BETTER = {"pattern_leakage", "lpips_outside"}
LONG_WEIGHTS = "stabilityai/stable-diffusion-2-1-base@5b8c4a1f9e0d7c3b2a6f8e9d0c1b2a3f4e5d6c7b"
CATEGORIES = {"furniture": 5, "jewelry": 2}  # furniture: more pairs than a grid shows


def _image(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (SIZE, SIZE), (220, 220, 220))
    ImageDraw.Draw(image).rectangle((12, 12, 36, 36), fill=colour)
    image.save(path)
    return str(path)


def _mask(path: Path) -> str:
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((12, 12, 36, 36), fill=255)
    mask.save(path)
    return str(path)


def value(method: str, t_start: int | None, pair_index: int, metric: str, shift: float = 0.0) -> float:
    """The fake value of a job: a later t_start keeps more outside and transfers less inside."""
    base = 0.3 + 0.01 * METRICS.index(metric) + 0.02 * pair_index
    if method == "cut_paste":
        return base + 0.5
    return base + (0.05 * t_start if "outside" in metric else -0.03 * t_start) + shift


def make_sweep_run(root: Path, shift: float = 0.0, worse_pair: str | None = None) -> Path:
    """A finished tstart-like run: clic/paper at t_start 2, 4, 6 and cut-and-paste (no t_start) over 7 pairs in two
    categories with expected images, ten metrics, loss terms and costs. `shift` moves every clic value; `worse_pair`
    loses a further 0.2 of pattern_fidelity (for comparisons)."""
    data, run_dir = root / "data", root / "run"
    pairs, index = [], 0
    for category, count in CATEGORIES.items():
        for _ in range(count):
            pair_id = f"{category[:3]}{index}"
            pairs.append(
                {
                    "pair_id": pair_id,
                    "category": category,
                    "source_object": "stool",
                    "target_object": "chair",
                    "source_image": _image(data / f"{pair_id}-src.png", (40, 120, 200)),
                    "source_mask": _mask(data / f"{pair_id}-src-mask.png"),
                    "target_image": _image(data / f"{pair_id}-tgt.png", (200, 90, 40)),
                    "target_mask": _mask(data / f"{pair_id}-tgt-mask.png"),
                    "expected_image": _image(data / f"{pair_id}-exp.png", (40, 200, 90)),
                }
            )
            index += 1
    store.write_pairs(run_dir, pairs)
    store.write_run_record(
        run_dir,
        {
            "suite": {"name": "tstart"},
            "plan": {
                "methods": [
                    {"label": "clic/paper", "method": "clic", "preset": "paper", "variant": ""},
                    {"label": "cut_paste/default", "method": "cut_paste", "preset": "default", "variant": ""},
                ]
            },
        },
    )
    for pair_index, pair in enumerate(pairs):
        concept = f"concept-{pair['pair_id']}"
        steps = np.arange(30)
        losses = pd.DataFrame(
            {
                "con": 1 / (1 + steps),
                "att": 0.1 + 0.01 * np.sin(steps),
                "roi": 0.5 / (1 + steps),
                "total": 1.5 / (1 + steps),
                "step": steps,
                "t": (steps * 37) % 1000,
            }
        )
        (run_dir / "concepts" / concept).mkdir(parents=True, exist_ok=True)
        losses.to_csv(run_dir / "concepts" / concept / "losses.csv", index=False)
        for method, t_start in [("clic", t) for t in T_STARTS] + [("cut_paste", None)]:
            job_id = f"{method}-{pair['pair_id']}-{t_start}"
            variant = f"t_start={t_start}" if t_start is not None else ""
            preset = "paper" if method == "clic" else "default"
            artifacts = run_dir / "artifacts" / job_id
            _image(artifacts / "edited.png", (60 + 20 * (t_start or 0), 160, 60))
            _image(artifacts / "attention.png", (255, 255, 255))
            base = {
                "run_id": "fake",
                "job_id": job_id,
                "task": "transfer",
                "pair_id": pair["pair_id"],
                "category": pair["category"],
                "method": method,
                "preset": preset,
                "seed": 0,
                "object_word": "chair",
                "label": f"{method}/{preset}" + (f" {variant}" if variant else ""),
                "variant": variant,
                "sweep": json.dumps({"t_start": t_start}) if t_start else None,
                "settings": json.dumps({"t_start": t_start}),
                "t_start": t_start,
                "status": "ok",
                "concept_id": concept if method == "clic" else None,
                "weights_label": LONG_WEIGHTS if method == "clic" else "none (no model)",
                "metric_weights": "tiny-random",
                "model_id": "tiny",
                "metric_scale": "raw",
                "artifact_image": f"artifacts/{job_id}/edited.png",
                "artifact_attention": f"artifacts/{job_id}/attention.png",
                "artifact_losses": f"concepts/{concept}/losses.csv" if method == "clic" else None,
                # the concept is learned once, by the first t_start's job; a later job reuses it
                "learn_seconds": (10.0 + pair_index) if t_start == 2 else None,
                "learn_peak_memory_mb": 900.0 + pair_index if t_start == 2 else None,
                "task_seconds": (t_start or 0.5) * (1 + pair_index),
                "peak_memory_mb": 500.0 + (t_start or 0),
            }
            rows = []
            for metric in METRICS:
                number = value(method, t_start, pair_index, metric, shift if method == "clic" else 0.0)
                if method == "clic" and pair["pair_id"] == worse_pair and metric == "pattern_fidelity":
                    number -= 0.2
                rows.append(
                    {**base, "metric": metric, "value": number, "higher_is_better": metric not in LOWER_IS_BETTER}
                )
            store.write_job_results(run_dir, job_id, rows)
    return run_dir


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run_dir = make_sweep_run(tmp_path_factory.mktemp("sweep"))
    return run_dir, write_report(run_dir)


def _section(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    return page[start : page.index("<h2", start + 1)]


def test_headline_wraps_into_tables_of_at_most_six_metrics(sweep_report: tuple[Path, Path]) -> None:
    page = sweep_report[1].read_text()
    headline = _section(page, "headline")
    tables = re.findall(r'<table class="results headline">(.*?)</table>', headline, re.S)
    assert len(tables) == -(-len(METRICS) // HTML_METRICS_PER_TABLE) == 2
    headers = [re.findall(r"<th>(.*?)</th>", table) for table in tables]
    assert [len(h) for h in headers] == [1 + HTML_METRICS_PER_TABLE + 1, 1 + len(METRICS) - HTML_METRICS_PER_TABLE]
    assert headers[0][-1] == "n failed" and "n failed" not in headers[1]
    shown = {re.sub(r"<wbr>| [↑↓]", "", h) for table in headers for h in table[1:]} - {"n failed"}
    assert shown == set(METRICS)
    # Rows in the suite's order: the planned clic/paper's sweep points by t_start, then cut-and-paste.
    labels = re.findall(r"<tr><td>([^<]*)</td>", tables[0])
    assert labels == ["clic/paper t_start=2", "clic/paper t_start=4", "clic/paper t_start=6", "cut_paste/default"]


def test_no_interval_or_star_below_three_pairs_and_no_whisker_in_figures(sweep_report: tuple[Path, Path]) -> None:
    page = sweep_report[1].read_text()
    table = _section(page, "metric-pattern_fidelity")
    jewelry = [row for row in re.findall(r"<tr>(.*?)</tr>", table, re.S) if "clic/paper t_start=2" in row][0]
    cells = re.findall(r"<td>(.*?)</td>", jewelry)
    assert "[" in cells[1] and "n=5" in cells[1], "furniture: 5 pairs, an interval"
    assert "[" not in cells[2] and "n=2" in cells[2], "jewelry: 2 pairs, no interval"
    # The figure: a whisker for each cell with an interval, none (a hollow marker) for the others.
    fig, ax = plt.subplots()
    cells_ci = {("a", "m1"): (1.0, 0.5, 1.5), ("b", "m1"): (2.0, np.nan, np.nan), ("a", "m2"): (3.0, 2.0, 4.0)}
    figures.ci_bars(ax, ["a", "b"], ["m1", "m2"], cells_ci)
    whiskers = [segment for collection in ax.collections for segment in collection.get_segments()]
    vertical = [s for s in whiskers if np.isclose(s[0][0], s[1][0])]
    assert sorted((s[0][1], s[1][1]) for s in vertical) == [(0.5, 1.5), (2.0, 4.0)]
    assert len(ax.patches) == 2, "bars only where there is an interval"
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "none" and len(line.get_xdata())]
    assert [float(y) for line in hollow for y in line.get_ydata()] == [2.0]
    plt.close(fig)


def test_tstart_points_are_the_hand_means_and_the_figure_is_on_the_page(sweep_report: tuple[Path, Path]) -> None:
    run_dir, index = sweep_report
    results = with_variants(store.read_plan_results(run_dir)[0])
    points = figures.tstart_points(results).set_index(["line", "t_start", "metric"])
    n_pairs = sum(CATEGORIES.values())
    for t in T_STARTS:
        for metric in ("pattern_fidelity", "psnr_outside"):
            expected = np.mean([value("clic", t, i, metric) for i in range(n_pairs)])
            assert points.loc[("clic/paper", float(t), metric), "mean"] == pytest.approx(expected)
            assert points.loc[("clic/paper", float(t), metric), "n_pairs"] == n_pairs
    # cut-and-paste reads no t_start: one point of its own
    assert list(points.loc["cut_paste/default"].index.get_level_values("t_start").unique()) == [-1.0]
    page = index.read_text()
    assert 'src="plots/tstart-tradeoff.png"' in _section(page, "tstart")
    assert (index.parent / "plots" / "tstart-tradeoff.svg").is_file()


def test_no_tstart_figure_without_a_sweep(tmp_path: Path) -> None:
    run_dir = make_sweep_run(tmp_path)
    results = with_variants(store.read_plan_results(run_dir)[0])
    one_point = results[results["t_start"].isna() | results["t_start"].eq(4)]
    assert figures.tstart_points(one_point).empty
    assert figures.tstart_figure(one_point, tmp_path, {}) is None


def test_image_grid_is_a_bounded_sample_with_expected_images_scores_and_labelled_attention(
    sweep_report: tuple[Path, Path],
) -> None:
    index = sweep_report[1]
    page = index.read_text()
    furniture = page[page.index('id="cat-furniture"') : page.index('id="cat-jewelry"')]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", furniture)
    assert headers == [
        "pair",
        "source (mask outline)",
        "target (mask outline)",
        "expected",
        "clic/paper t_start=2",
        "clic/paper t_start=4",
        "clic/paper t_start=6",
        "cut_paste/default",
    ]
    shown = re.findall(r'<td class="rowlabel"><b>([^<]*)</b>', furniture)
    assert shown == ["fur0", "fur1", "fur2", "fur3"] == [f"fur{i}" for i in range(grids.PAIRS_PER_CATEGORY)]
    assert f"at most {grids.PAIRS_PER_CATEGORY} pairs per category" in page
    assert all((index.parent / src).is_file() for src in re.findall(r'<img src="([^"]*)"', furniture))
    assert 'alt="expected output of fur0"' in furniture
    # Scores under each output: the first three main scores the job has, with its values.
    first_row = furniture[furniture.index("<b>fur0</b>") : furniture.index("attention maps of fur0")]
    assert f"pattern_fidelity {value('clic', 2, 0, 'pattern_fidelity'):.4g}" in first_row
    assert f"psnr_outside {value('cut_paste', None, 0, 'psnr_outside'):.4g}" in first_row
    # Attention maps in a labelled row, for clic only (cut-and-paste records its pasted region, no attention).
    attention_row = furniture[furniture.index("attention maps of fur0") : furniture.index("<b>fur1</b>")]
    assert attention_row.count("<img") == len(T_STARTS)
    assert "cut_paste" not in attention_row


def test_loss_terms_share_one_figure_per_concept_set_and_smoothing_is_a_running_mean(
    sweep_report: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, index = sweep_report
    results = with_variants(store.read_plan_results(run_dir)[0])
    plots = figures.loss_figures(run_dir, results, tmp_path)
    assert set(plots) == {f"clic/paper t_start={t}" for t in T_STARTS}
    assert len(set(plots.values())) == 1, "the sweep's points learned the same concepts"
    raw = np.array([1.0, 5.0, 3.0, 7.0, 2.0])
    assert figures.smooth(raw, 3).tolist() == pytest.approx([3.0, 3.0, 5.0, 4.0, 4.5])
    losses = _section(index.read_text(), "losses")
    assert losses.count("<img") == 1 and "clic/paper t_start=2, clic/paper t_start=4" in losses


def test_cost_table_medians_and_peaks(sweep_report: tuple[Path, Path]) -> None:
    run_dir, index = sweep_report
    results = with_variants(store.read_plan_results(run_dir)[0])
    costs = cost_table(results).set_index("method")
    n_pairs = sum(CATEGORIES.values())
    first = costs.loc["clic/paper t_start=2"]
    assert first["concepts learned"] == n_pairs
    assert first["median learn s"] == pytest.approx(np.median([10.0 + i for i in range(n_pairs)]))
    assert first["peak learn memory MB"] == 900.0 + n_pairs - 1
    assert costs.loc["clic/paper t_start=4", "concepts learned"] == 0, "reused concepts are not counted"
    assert costs.loc["clic/paper t_start=6", "median task s"] == pytest.approx(
        np.median([6.0 * (1 + i) for i in range(n_pairs)])
    )
    assert costs.loc["cut_paste/default", "peak task memory MB"] == 500.0
    assert 'id="costs"' in index.read_text() and (index.parent / "tables" / "costs.csv").is_file()


def test_weights_are_short_keys_with_one_legend(sweep_report: tuple[Path, Path]) -> None:
    index = sweep_report[1]
    page = index.read_text()
    assert page.count(LONG_WEIGHTS) == 1 + 1, "the legend and the provenance's model line"
    legend = page[page.index('id="weights"') :]
    assert LONG_WEIGHTS in legend[: legend.index("</table>")]
    assert LONG_WEIGHTS in (index.parent / "tables" / "summary.csv").read_text(), "the CSV keeps the full text"


def test_compare_page_puts_a_and_b_side_by_side_with_the_worst_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_a = make_sweep_run(tmp_path / "a")
    run_b = make_sweep_run(tmp_path / "b", worse_pair="fur3")
    args = argparse.Namespace(
        run_a=str(run_a), run_b=str(run_b), metric=None, max_drop=0.0, alpha=0.05, html=str(tmp_path / "compare")
    )
    assert compare_main(args) == 0, "one worse pair of 7 is no significant drop"
    assert f"compare: {tmp_path / 'compare' / 'index.html'}" in capsys.readouterr().out
    page = (tmp_path / "compare" / "index.html").read_text()
    row = [
        r
        for r in re.findall(r"<tr class=\"verdict-[a-z]+\">(.*?)</tr>", page, re.S)
        if "pattern_fidelity" in r and "t_start=4" in r
    ][0]
    cells = re.findall(r"<td>(.*?)</td>", row)
    mean_a = np.mean([value("clic", 4, i, "pattern_fidelity") for i in range(7)])
    assert cells[3] == f"{mean_a:.4g}" and cells[4] == f"{mean_a - 0.2 / 7:.4g}"
    assert cells[5] == f"{-0.2 / 7:.4g}" and cells[9] == "ok"
    worst = worst_pairs(store.read_plan_results(run_a)[0], store.read_plan_results(run_b)[0])
    assert set(worst["pair_id"]) == {"fur3"} and set(worst["metric"]) == {"pattern_fidelity"}
    assert worst["drop"].tolist() == pytest.approx([0.2] * len(T_STARTS))
    images = re.findall(r'<img src="([^"]*)"', page)
    assert all((tmp_path / "compare" / src).is_file() for src in images)
    assert sum("-image.png" in src for src in images) == 2 * 3, "A and B of the 3 worst (pair, label)"
