"""The page of a comparison: `clic-bench compare A B --html OUT` writes OUT/index.html.

For regression-testing a change (a loss variant, new code) against a baseline run: per metric and method label
(variant), A and B side by side with the paired difference B − A, its interval (pairs resampled, seeds nested)
and the gate's verdict, a figure of the differences, and the pairs that changed most for the worse as image rows
(source | target | expected | A's output | B's output, each output with its scores). Self-contained like the
report: inline CSS, images copied under OUT/images, relative links. :func:`compare_main` is the command.
"""

from __future__ import annotations

import argparse
import html
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analyse.aggregate import (
    INTERVAL_NOTE,
    TABLE_CSS,
    _ok_values,
    directions,
    format_number,
    higher_is_better,
    read_run_results,
    to_markdown,
    uses_tiny_random,
)
from harness.analyse.figures import FIGURE_NOTE, _panels
from harness.analyse.grids import GRID_CSS, Thumbnails, image_width, job_scores, recorded_pairs, scores_html
from harness.analyse.images import image_name
from harness.analyse.paired import JOB_IDENTITY, _labels, _sweep_key, compare_runs
from harness.analyse.weights_legend import legend_html, weights_keys, with_short_weights
from harness.errors import UsageError

WORST_PAIRS = 3  # image rows per metric: the pairs whose value got worst from A to B
PAGE_CSS = (
    TABLE_CSS
    + GRID_CSS
    + """
tr.verdict-fail td { background: #f8d7da; } tr.verdict-better td { background: #e6f4ea; }
table.results td { overflow-wrap: anywhere; }
figure { margin: 0 0 1em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.75em; color: #555; }
"""
)
VERDICT_NOTE = (
    "Verdict: fail = the mean got worse by more than the tolerated drop and the paired test on per-pair "
    "mean differences is significant; better = significantly better; ok = neither. The test: Wilcoxon "
    "signed-rank, the paired t-test below 6 pairs, none below 3 pairs."
)


def worst_pairs(
    df_a: pd.DataFrame, df_b: pd.DataFrame, metrics: Sequence[str] | None = None, per_metric: int = WORST_PAIRS
) -> pd.DataFrame:
    """Per metric, the `per_metric` (pair, method label) whose value changed most for the worse from A to B
    (jobs matched as the gate matches them), with the lowest-seed job of each side: metric, label, pair_id, task,
    value_a, value_b, drop, job_a, job_b."""

    def values(df: pd.DataFrame) -> pd.DataFrame:
        rated = _ok_values(df)
        if metrics is not None:
            rated = rated[rated["metric"].isin(set(metrics))]
        return rated.assign(label=_labels(rated), sweep=_sweep_key(rated))

    a, b = values(df_a), values(df_b)
    columns = ["metric", "label", "pair_id", "task", "value_a", "value_b", "drop", "job_a", "job_b"]
    if a.empty or b.empty:
        return pd.DataFrame(columns=columns)
    keys = [*JOB_IDENTITY, "metric"]
    side = ["value", "job_id"]
    a = a.sort_values(["seed", "job_id"]).groupby(keys, dropna=False)[side].first().reset_index()
    b = b.sort_values(["seed", "job_id"]).groupby(keys, dropna=False)[side].first().reset_index()
    paired = a.merge(b, on=keys, suffixes=("_a", "_b"))
    if paired.empty:
        return pd.DataFrame(columns=columns)
    declared = directions(df_b, df_a)
    sign = np.array([-1.0 if higher_is_better(str(m), declared) else 1.0 for m in paired["metric"]])
    paired = paired.assign(drop=sign * (paired["value_b"] - paired["value_a"]))
    per_pair = (
        paired.sort_values(["seed", "job_id_a"])
        .groupby(["metric", "label", "pair_id", "task"], dropna=False)
        .agg(
            value_a=("value_a", "mean"),
            value_b=("value_b", "mean"),
            drop=("drop", "mean"),
            job_a=("job_id_a", "first"),
            job_b=("job_id_b", "first"),
        )
        .reset_index()
    )
    worst = (
        per_pair[per_pair["drop"] > 0]
        .sort_values(["metric", "drop"], ascending=[True, False])
        .groupby("metric", sort=True)
        .head(per_metric)
    )
    return worst[columns].reset_index(drop=True)


def _delta_table(deltas: pd.DataFrame, keys: Mapping[str, str], declared: Mapping[str, bool]) -> str:
    head = [
        "metric",
        "method label",
        "n pairs",
        "mean A",
        "mean B",
        "B − A",
        "95% CI",
        "p",
        "test",
        "verdict",
        "failed A / B",
        "weights",
    ]
    rows = []
    for row in deltas.itertuples(index=False):
        ci = (
            f"[{format_number(row.ci_low)}, {format_number(row.ci_high)}]"
            if np.isfinite(row.ci_low)
            else f"none ({row.n_pairs} pairs)"
        )
        arrow = "↑" if higher_is_better(str(row.metric), declared) else "↓"
        cells = [
            f"{row.metric} {arrow}",
            row.label,
            row.n_pairs,
            format_number(row.mean_a),
            format_number(row.mean_b),
            format_number(row.delta),
            ci,
            format_number(row.p_value),
            row.test,
            row.verdict,
            f"{row.n_failed_a} / {row.n_failed_b}",
            row.weights,
        ]
        rows.append(
            f'<tr class="verdict-{html.escape(str(row.verdict))}">'
            + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells)
            + "</tr>"
        )
    header = "".join(f"<th>{html.escape(text)}</th>" for text in head)
    return f'<table class="results"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _image_rows(
    worst: pd.DataFrame, run_a: Path, run_b: Path, df_a: pd.DataFrame, df_b: pd.DataFrame, out: Path
) -> str:
    """The worst-changed pairs as image rows: pair and change | source | target | expected | A | B."""
    if worst.empty:
        return "<p>No pair got worse on any metric.</p>"
    shown = worst["pair_id"].astype(str).unique()
    pairs = {**recorded_pairs(run_a, shown), **recorded_pairs(run_b, shown)}
    with_expected = any(
        pairs.get(str(p)) is not None and pairs[str(p)].expected_image is not None for p in worst["pair_id"]
    )
    inputs = ["source (mask outline)", "target (mask outline)"] + (["expected"] if with_expected else [])
    width = image_width(len(inputs) + 2)
    thumbs = Thumbnails(out)
    scores_a, scores_b = job_scores(df_a, worst["job_a"].tolist()), job_scores(df_b, worst["job_b"].tolist())
    artifacts_a = (
        df_a.drop_duplicates("job_id").set_index("job_id")["artifact_image"]
        if "artifact_image" in df_a
        else pd.Series(dtype=object)
    )
    artifacts_b = (
        df_b.drop_duplicates("job_id").set_index("job_id")["artifact_image"]
        if "artifact_image" in df_b
        else pd.Series(dtype=object)
    )
    rows = []
    for row in worst.itertuples(index=False):
        pair = pairs.get(str(row.pair_id))
        cells = thumbs.inputs(pair, width)[: len(inputs)] or [""] * len(inputs)
        for side, run_dir, job, artifacts, scores in (
            ("a", run_a, row.job_a, artifacts_a, scores_a),
            ("b", run_b, row.job_b, artifacts_b, scores_b),
        ):
            artifact = artifacts.get(job)
            image = (
                thumbs.cell(
                    run_dir / artifact,
                    f"{side}-" + image_name(job, "image"),
                    f"{side.upper()}: {row.label} on {row.pair_id}",
                    width,
                )
                if isinstance(artifact, str)
                else ""
            )
            cells.append(f'{image}<div class="scores">{scores_html(scores.get(str(job), {}))}</div>')
        label = (
            f"<b>{html.escape(str(row.pair_id))}</b><br>{html.escape(str(row.label))}, {html.escape(str(row.task))}"
            f"<br>{html.escape(str(row.metric))}: {html.escape(format_number(row.value_a))} → "
            f"{html.escape(format_number(row.value_b))}"
        )
        rows.append(f'<tr><td class="rowlabel">{label}</td>' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(text)}</th>" for text in [*inputs, "A (baseline)", "B (candidate)"])
    return (
        '<table class="imagegrid"><colgroup><col style="width:150px">'
        + f'<col style="width:{width + 6}px">' * (len(inputs) + 2)
        + f'</colgroup><thead><tr><th class="rowlabel">pair, label, change</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def write_compare_page(
    run_a: str | Path,
    run_b: str | Path,
    df_a: pd.DataFrame,
    df_b: pd.DataFrame,
    deltas: pd.DataFrame,
    out: str | Path,
    max_drop: float,
    alpha: float,
    metrics: Sequence[str] | None = None,
) -> Path:
    """Write OUT/index.html (and its images and figure) for the gate's `deltas` of run B against run A."""
    run_a, run_b, out = Path(run_a), Path(run_b), Path(out)
    for folder in ("images", "plots"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    declared = directions(df_b, df_a)
    keys = weights_keys(pd.concat([df_a, df_b], ignore_index=True))
    shown = with_short_weights(deltas.sort_values(["metric", "label"]), keys)
    figure = _delta_figure(deltas, declared, out / "plots")
    worst = worst_pairs(df_a, df_b, metrics)
    body = [
        *_page_head(run_a, run_b, df_a, df_b, deltas, max_drop, alpha, metrics),
        '<h2 id="deltas">Per metric and method label</h2>',
        _delta_table(shown, keys, declared),
        (
            f'<figure><img src="{figure}" alt="differences B − A"><figcaption>{html.escape(FIGURE_NOTE)}'
            f"</figcaption></figure>"
            if figure
            else ""
        ),
        f'<h2 id="worst">Pairs that got worse</h2><p>Per metric the {WORST_PAIRS} (pair, method label) with the '
        f"largest change in the worse direction, lowest seed; under each output its main scores.</p>",
        _image_rows(worst, run_a, run_b, df_a, df_b, out),
        legend_html(keys),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>compare {html.escape(run_b.name)} vs {html.escape(run_a.name)}</title><style>{PAGE_CSS}</style>"
        "</head>\n<body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _delta_figure(deltas: pd.DataFrame, declared: Mapping[str, bool], folder: Path) -> str | None:
    """The CI-bar figure of the differences B − A, a panel per metric (None without metrics)."""
    cells = {
        (str(m), str(label)): (d, lo, hi)
        for m, label, d, lo, hi in zip(
            deltas["metric"], deltas["label"], deltas["delta"], deltas["ci_low"], deltas["ci_high"]
        )
    }
    metric_names = sorted(deltas["metric"].astype(str).unique())
    titles = {m: f"{m} {'↑' if higher_is_better(m, declared) else '↓'}: B − A" for m in metric_names}
    if not metric_names:
        return None
    labels = sorted(deltas["label"].astype(str).unique())
    return _panels(metric_names, labels, cells, titles, folder, "deltas", zero_line=True)


def _page_head(
    run_a: Path,
    run_b: Path,
    df_a: pd.DataFrame,
    df_b: pd.DataFrame,
    deltas: pd.DataFrame,
    max_drop: float,
    alpha: float,
    metrics: Sequence[str] | None,
) -> list[str]:
    """The title, the random-weights warning, which runs, the gate and its verdicts, how jobs are matched."""
    verdicts = deltas["verdict"].value_counts().to_dict()
    summary = ", ".join(f"{verdicts.get(v, 0)} {v}" for v in ("fail", "better", "ok"))
    tiny = uses_tiny_random(df_a) or uses_tiny_random(df_b)
    gate = f"tolerated drop {format_number(float(max_drop))}, α = {format_number(float(alpha))}" + (
        f", gated metrics: {', '.join(metrics)}" if metrics else ", all metrics"
    )
    return [
        f"<h1>Compare: {html.escape(run_b.name)} (B) against {html.escape(run_a.name)} (A)</h1>",
        (
            '<p class="warning">Numbers made with random-weight models: they test the pipeline, not the method.</p>'
            if tiny
            else ""
        ),
        f"<p>A (baseline): <code>{html.escape(str(run_a))}</code><br>B (candidate): "
        f"<code>{html.escape(str(run_b))}</code><br>Gate: {html.escape(gate)}. Verdicts: <b>{html.escape(summary)}"
        f"</b>.</p>",
        f"<p>Jobs are matched on pair, task, seed, object, method label and sweep point; B − A per matched job, "
        f"{html.escape(INTERVAL_NOTE)}. {html.escape(VERDICT_NOTE)}</p>",
    ]


# ---------------------------------------------------------------------------------------------- CLI


def compare_main(args: argparse.Namespace) -> int:
    """`clic-bench compare RUN_A RUN_B [--html OUT]`: print the delta table (and write its page to OUT/index.html);
    1 if a gated metric fails, 2 on no results."""
    from contextlib import ExitStack

    from harness.analyse.remote_runs import run_folder_to_read

    with ExitStack() as reading:  # a run on object storage: its tables pulled, its shown images fetched as read
        args.run_a, args.run_b = (
            reading.enter_context(run_folder_to_read(run, option))
            for run, option in ((args.run_a, "RUN_A"), (args.run_b, "RUN_B"))
        )
        return _compare(args)


def _compare(args: argparse.Namespace) -> int:
    frames = {}
    for label, run_dir in (("A", args.run_a), ("B", args.run_b)):
        frame = read_run_results(run_dir)
        if frame.empty or "metric" not in frame.columns:
            raise UsageError(f"run {label} ({run_dir}) has no results")
        frames[label] = frame
    metrics = list(args.metric) if getattr(args, "metric", None) else None
    deltas = compare_runs(frames["A"], frames["B"], metrics=metrics, max_drop=args.max_drop, alpha=args.alpha)
    if deltas.empty:
        raise UsageError(
            "no jobs of run B match jobs of run A" + (f" for metrics {', '.join(metrics)}" if metrics else "")
        )
    shown = deltas.rename(columns={"label": "method label"})[
        [
            "metric",
            "method label",
            "n",
            "n_pairs",
            "mean_a",
            "mean_b",
            "delta",
            "ci_low",
            "ci_high",
            "p_value",
            "verdict",
            "weights",
        ]
    ]
    print(to_markdown(shown), end="")
    if getattr(args, "html", None):
        page = write_compare_page(
            args.run_a,
            args.run_b,
            frames["A"],
            frames["B"],
            deltas,
            args.html,
            max_drop=args.max_drop,
            alpha=args.alpha,
            metrics=metrics,
        )
        print(f"compare: {page}")
    failures = deltas[deltas["verdict"].eq("fail")]
    if not failures.empty:
        print(
            f"\nRegression: {len(failures)} metric(s) dropped by more than {args.max_drop} "
            f"(p < {args.alpha}): "
            + ", ".join(f"{m} ({label})" for m, label in failures[["metric", "label"]].itertuples(index=False))
        )
        return 1
    return 0
