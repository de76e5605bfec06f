"""The report's page (index.html): its sections in order, the provenance, the preset sources and the ablation grid."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analyse import figures
from harness.analyse import headline as headline_table
from harness.analyse.aggregate import (
    INTERVAL_NOTE,
    TABLE_CSS,
    higher_is_better,
    method_labels,
    to_html_fragment,
    uses_tiny_random,
)
from harness.analyse.costs import COST_NOTE
from harness.analyse.grids import GRID_CSS, grid_note
from harness.analyse.images import file_slug, image_name, thumbnail
from harness.analyse.report_tables import PAIRED_NOTE, direction_text
from harness.analyse.weights_legend import legend_html, with_short_weights
from harness.plan.identity import method_label
from harness.store import read_pairs


@dataclass(frozen=True)
class ReportFigures:
    """The figures of a report (paths relative to it): one per per-category table (metric → path), the headline's,
    the paired differences', the t_start trade-off (None when the run sweeps no t_start) and the loss terms
    (method label → path)."""

    per_metric: Mapping[str, str]
    headline: str | None
    paired: str | None
    tstart: str | None
    losses: Mapping[str, str]


REPORT_CSS = (
    TABLE_CSS
    + """
nav { position: sticky; top: 0; background: #fafafa; border-bottom: 1px solid #ddd; padding: 0.4em 0; }
nav a { margin-right: 0.8em; }
.grid { border-collapse: collapse; margin-bottom: 1.2em; }
.grid td { vertical-align: top; text-align: center; font-size: 0.75em; padding: 3px; }
.grid img { display: block; margin: auto; width: 112px; image-rendering: pixelated; }
.plots img { max-width: 480px; margin: 0 1em 1em 0; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
[id] { scroll-margin-top: 4em; }  /* anchors land below the sticky nav */
table.headline td small { color: #666; }
table.headline td.best { background: #e6f4ea; }
table.headline td:first-child { max-width: 14em; }
table.results td { overflow-wrap: anywhere; }
.plots figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
.plots figure img { max-width: 560px; }
.plots figure img.wide { max-width: 100%; }
.plots figcaption { font-size: 0.75em; color: #555; max-width: 560px; }
.verdict-fail { background: #f8d7da; } .verdict-better { background: #e6f4ea; }
"""
    + GRID_CSS
)


def manifest_pairs(run_dir: Path, run_info: Mapping[str, Any] | None = None) -> dict[str, dict[str, Path | None]]:
    """pair_id → source/target image and mask paths, from the pairs the run recorded (RUN/pairs.parquet)."""
    columns = ("source_image", "source_mask", "target_image", "target_mask")
    return {
        str(row["pair_id"]): {column: Path(row[column]) if row.get(column) else None for column in columns}
        for row in read_pairs(run_dir)
    }


def ablation_section(
    run_dir: Path,
    results: pd.DataFrame,
    run_info: Mapping[str, Any],
    labels: list[str],
    ablation: pd.DataFrame,
    out: Path,
) -> str:
    """The table and the image grid in the layout of the paper's Fig. 8: a row per pair, a column per variant."""
    jobs = results.dropna(subset=["artifact_image"]).drop_duplicates("job_id")
    jobs = jobs.assign(label=[method_label(m, p) for m, p in zip(jobs["method"], jobs["preset"])])
    jobs = jobs[jobs["label"].isin(labels)]
    # One output per pair and variant: transfers when the run has any, the lowest seed and first settings.
    task = "transfer" if jobs["task"].eq("transfer").any() else (jobs["task"].min() if not jobs.empty else None)
    jobs = jobs[jobs["task"].eq(task)].sort_values(["seed", "settings", "job_id"]).drop_duplicates(["pair_id", "label"])
    manifest = manifest_pairs(run_dir, run_info)
    heads = "".join(f"<th>{html.escape(text)}</th>" for text in ["pair", "source", "target", *labels])
    rows = []
    for (category, pair_id), pair_jobs in jobs.groupby(["category", "pair_id"], sort=True):
        cells = [f"<td>{html.escape(str(pair_id))}<br>{html.escape(str(category))}</td>"]
        pair_paths = manifest.get(str(pair_id), {})
        for role in ("source", "target"):
            image, dest = pair_paths.get(f"{role}_image"), out / "images" / image_name(pair_id, role)
            ok = image is not None and thumbnail(image, dest, pair_paths.get(f"{role}_mask"))
            cells.append(f"<td>{_img(dest, out, role) if ok else ''}</td>")
        by_label = pair_jobs.set_index("label")
        for label in labels:
            artifact = by_label["artifact_image"].get(label)
            dest = out / "images" / image_name(by_label["job_id"].get(label), "image")
            ok = isinstance(artifact, str) and thumbnail(run_dir / artifact, dest)
            cells.append(f"<td>{_img(dest, out, label) if ok else ''}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<h2 id="ablations">Ablations</h2><p>Mean [95% bootstrap CI] over all categories; columns of the grid '
        f"below in the suite file's order ({html.escape(str(task))} outputs, lowest seed).</p>"
        f'<div class="ablation">{page_table(ablation, {})}</div>'
        f'<table class="grid" id="ablation-grid"><tr>{heads}</tr>{"".join(rows)}</table>'
    )


def _img(path: Path, out: Path, alt: str) -> str:
    return f'<img src="{html.escape(path.relative_to(out).as_posix())}" alt="{html.escape(alt)}">'


def _provenance(run_dir: Path, run_info: Mapping[str, Any], results: pd.DataFrame) -> str:
    suite = run_info.get("suite") if isinstance(run_info.get("suite"), Mapping) else {}
    models = (
        results.dropna(subset=["model_id"]).drop_duplicates(["method", "model_id", "weights_hash"])
        if not results.empty
        else results
    )
    metric_weights = (
        results.dropna(subset=["metric"]).drop_duplicates(["metric", "metric_weights"])
        if not results.empty
        else results
    )
    facts = [
        ("run folder", str(run_dir)),
        ("suite", str(suite.get("name", ""))),
        ("code version", ", ".join(sorted(results["code_version"].dropna().unique())) if not results.empty else ""),
        ("host", json.dumps(run_info.get("host", ""), default=str)),
        ("git", str(run_info.get("git") or "")),
        (
            "start / end",
            f"{run_info.get('started_at', run_info.get('start', ''))} / "
            f"{run_info.get('finished_at', run_info.get('end', ''))}",
        ),
        ("counts", json.dumps(run_info.get("counts", {}), default=str)),
        ("versions", json.dumps(run_info.get("versions", {}), default=str, sort_keys=True)),
        (
            "models",
            "; ".join(
                f"{m}: {mid} (hash {h}, {label})"
                for m, mid, h, label in models[["method", "model_id", "weights_hash", "weights_label"]].itertuples(
                    index=False
                )
            )
            if not models.empty
            else "",
        ),
        (
            "metric weights",
            "; ".join(f"{m}: {w}" for m, w in metric_weights[["metric", "metric_weights"]].itertuples(index=False))
            if not metric_weights.empty
            else "",
        ),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    suite_json = html.escape(json.dumps(suite, indent=2, default=str, sort_keys=True))
    return (
        f'<table class="results">{rows}</table>\n<details><summary>suite</summary><pre>{suite_json}</pre>'
        f"</details>{_preset_sources(results)}"
    )


def _preset_sources(results: pd.DataFrame) -> str:
    """Each declared method preset of the run, every setting with the source of its value
    (``clic methods show METHOD --preset PRESET``)."""
    from clic.presets import declared_settings, settings_table

    if results.empty:
        return ""
    blocks = []
    pairs = results[["method", "preset"]].dropna().drop_duplicates()  # a few distinct pairs among every row
    for method, preset in sorted(set(pairs.itertuples(index=False, name=None))):
        declared = declared_settings(method, preset)
        if declared:
            rows = "".join(
                f"<tr><td>{html.escape(r['setting'])}</td><td>{html.escape(r['value'])}</td>"
                f"<td>{html.escape(r['source'])}</td></tr>"
                for r in settings_table(declared)
            )
            blocks.append(
                f"<details><summary>{html.escape(method)} --preset {html.escape(preset)}: settings and "
                f'sources</summary><table class="results"><tr><th>setting</th><th>value</th>'
                f"<th>source</th></tr>{rows}</table></details>"
            )
    return "".join(blocks)


PAIRED_PAGE_COLUMNS = [
    "metric",
    "method",
    "reference",
    "n_pairs",
    "mean_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "test",
    "weights",
]


def page_table(table: pd.DataFrame, keys: Mapping[str, str]) -> str:
    """A table for the page: short weights keys, and headers that may break after an underscore."""
    fragment = to_html_fragment(with_short_weights(table, keys), note="")
    return re.sub(r"<th>([^<]*)</th>", lambda m: "<th>" + m.group(1).replace("_", "_<wbr>") + "</th>", fragment)


def paired_page_table(paired: pd.DataFrame, declared: Mapping[str, bool]) -> pd.DataFrame:
    """The paired differences as the page shows them: one label per side, the direction on the metric."""
    if paired.empty:
        return paired
    shown = paired.assign(
        metric=[f"{m} {'↑' if higher_is_better(str(m), declared) else '↓'}" for m in paired["metric"]],
        method=[method_label(m, p) for m, p in zip(paired["method"], paired["preset"])],
        reference=[method_label(r, p) for r, p in zip(paired["reference"], paired["reference_preset"])],
    )
    return shown[PAIRED_PAGE_COLUMNS]


def figure_html(src: str | None, caption: str, wide: bool = False) -> str:
    if not src:
        return ""
    wide_class = ' class="wide"' if wide else ""
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"{wide_class}>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _by_figure(labels: Sequence[str], plots: Mapping[str, str]) -> dict[str, list[str]]:
    """Figure path ("" for none) → the labels it shows, in the order of `labels`."""
    grouped: dict[str, list[str]] = {}
    for label in labels:
        grouped.setdefault(plots.get(label, ""), []).append(label)
    return grouped


def index_html(
    run_dir: Path,
    run_info: Mapping[str, Any],
    results: pd.DataFrame,
    head: headline_table.Headline,
    per_metric: Mapping[str, pd.DataFrame],
    paired: pd.DataFrame,
    failures: pd.DataFrame,
    plots: ReportFigures,
    grids: Mapping[str, str],
    reference: str,
    ablation_html: str = "",
    declared: Mapping[str, bool] | None = None,
    costs: pd.DataFrame | None = None,
    keys: Mapping[str, str] | None = None,
) -> str:
    declared, keys = declared or {}, keys or {}
    tiny = uses_tiny_random(results)
    banner = f'<p class="warning">{html.escape(headline_table.TINY_FOOTNOTE)}</p>' if tiny else ""
    nav = _nav(plots, bool(ablation_html), len(failures))

    body = [
        f"<nav>{' '.join(nav)}</nav>",
        f"<h1>Run report: {html.escape(run_dir.name)}</h1>",
        banner,
        _headline_section(head, plots),
        '<p>Tables as CSV/Markdown/HTML: <a href="tables/summary.csv">summary.csv</a>, '
        '<a href="tables/paired_differences.csv">paired_differences.csv</a>, '
        '<a href="tables/costs.csv">costs.csv</a>, <a href="summary.md">summary.md</a> (with the full '
        'weights text); every pair\'s values: <a href="tables/pairs.html">pairs.html</a> (sortable), '
        '<a href="tables/pairs.parquet">pairs.parquet</a>.</p>',
    ]
    body += _table_sections(per_metric, paired, costs, plots, reference, declared, keys)
    body.append(f'<h2 id="provenance">Provenance</h2>{_provenance(run_dir, run_info, results)}' + legend_html(keys))
    if ablation_html:
        body.append(ablation_html)
    body += _image_and_loss_sections(results, grids, plots)
    body.append(
        f'<h2 id="failures">Failed jobs ({len(failures)})</h2>'
        + (page_table(failures, keys) if not failures.empty else "<p>None.</p>")
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(run_dir.name)} report</title><style>{REPORT_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _headline_section(head: headline_table.Headline, plots: ReportFigures) -> str:
    return (
        f'<h2 id="headline">All categories</h2><p>Mean and, under it, its 95% CI over every category '
        f"({INTERVAL_NOTE}; a cell without one says over how many pairs); ↑ higher is better, ↓ lower is better; "
        f"<strong>{headline_table.BEST_MARK}</strong> best of its column; n failed: the method's failed jobs. "
        f"Values are raw (see the scale by each per-category table).</p>"
        + headline_table.to_html(head)
        + f'<div class="plots">{figure_html(plots.headline, figures.FIGURE_NOTE, wide=True)}</div>'
    )


def _table_sections(
    per_metric: Mapping[str, pd.DataFrame],
    paired: pd.DataFrame,
    costs: pd.DataFrame | None,
    plots: ReportFigures,
    reference: str,
    declared: Mapping[str, bool],
    keys: Mapping[str, str],
) -> list[str]:
    """The t_start trade-off (when swept), the per-category tables with their figures, the paired differences
    and the costs."""
    body = []
    if plots.tstart:
        body.append(
            '<h2 id="tstart">t_start trade-off</h2><p>Each line is a method label through the values of '
            "t_start the run swept (each point marked t=…): later t_start keeps more of the target outside "
            "the region and transfers less inside it. Means over all categories; whiskers: 95% CI over "
            "pairs (none below 3 pairs).</p>"
            f'<div class="plots">{figure_html(plots.tstart, "t_start trade-off", wide=True)}</div>'
        )
    body.append(
        f'<h2 id="tables">Per category: mean [95% CI] n=values</h2><p>{INTERVAL_NOTE}; n counts values '
        f"(pairs × seeds). Each table is followed by its figure.</p>"
    )
    for metric, table in per_metric.items():
        scale = ", ".join(sorted({str(v) for v in table.get("metric_scale", []) if str(v)}))
        body.append(
            f'<h3 id="metric-{file_slug(metric)}">{html.escape(metric)} ({direction_text(metric, declared)}'
            f"{'; ' + html.escape(scale) if scale else ''})</h3>"
            + page_table(table.drop(columns=["metric_scale"], errors="ignore"), keys)
            + f'<div class="plots">{figure_html(plots.per_metric.get(metric), figures.FIGURE_NOTE)}</div>'
        )
    body.append(
        f'<h2 id="paired">Paired differences (method − {html.escape(reference)})</h2>'
        f"<p>{html.escape(PAIRED_NOTE)} {html.escape(INTERVAL_NOTE)}.</p>"
        + page_table(paired_page_table(paired, declared), keys)
        + f'<div class="plots">{figure_html(plots.paired, figures.FIGURE_NOTE, wide=True)}</div>'
    )
    body.append(
        f'<h2 id="costs">Costs</h2><p>{html.escape(COST_NOTE)}</p>'
        + (page_table(costs, keys) if costs is not None and not costs.empty else "<p>No jobs.</p>")
    )
    return body


def _nav(plots: ReportFigures, ablations: bool, failed: int) -> list[str]:
    """The page's links to its sections, in page order."""
    nav = (
        [
            '<a href="#headline">headline</a>',
            '<a href="#tables">per category</a>',
            '<a href="#paired">paired</a>',
            '<a href="#costs">costs</a>',
        ]
        + (['<a href="#tstart">t_start</a>'] if plots.tstart else [])
        + ['<a href="#provenance">provenance</a>']
        + (['<a href="#ablations">ablations</a>'] if ablations else [])
    )
    nav += ['<a href="#images">images</a>', '<a href="#losses">losses</a>']
    nav.append(f'<a href="#failures">failures ({failed})</a>')
    return nav


def _distinct_labels(results: pd.DataFrame) -> list[str]:
    if results.empty or not {"method", "preset"} <= set(results.columns):
        return []
    return list(method_labels(results).unique())


def _image_and_loss_sections(results: pd.DataFrame, grids: Mapping[str, str], plots: ReportFigures) -> list[str]:
    """The image grids per category, then the loss-term figures per method label."""
    body = [f'<h2 id="images">Images</h2><p>{html.escape(grid_note(results))}</p>']
    for category, grid in grids.items():
        body.append(f'<h3 id="cat-{file_slug(category)}">{html.escape(category)}</h3>{grid}')
    body.append(
        '<h2 id="losses">Methods: loss terms while learning</h2><p>A panel per term of each concept\'s '
        "losses.csv, a line per pair; labels that share their concepts (the points of a transfer sweep) "
        "share one figure.</p>"
    )
    shown = sorted(set(_distinct_labels(results)))
    for plot, labels in _by_figure(shown, plots.losses).items():
        anchors = "".join(f'<span id="method-{file_slug(label)}"></span>' for label in labels)
        image = (
            figure_html(plot, "loss terms of " + ", ".join(labels), wide=True)
            if plot
            else "<p>No loss curves recorded.</p>"
        )
        body.append(f'<h3>{anchors}{html.escape(", ".join(labels))}</h3><div class="plots">{image}</div>')
    return body
