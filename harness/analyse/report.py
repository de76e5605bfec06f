"""The static report of a run folder: RUN/report/index.html plus summary.md, CSV tables and plots.

The folder is self-contained: CSS is inline, images are thumbnails copied into report/images/, plots are
PNG/SVG under report/plots/, and every link is relative, so it opens from disk (or from a zip) with no
server and nothing fetched from the network.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import shutil
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from clic import is_random_weights  # noqa: E402

from harness.analyse.aggregate import (  # noqa: E402
    ALL_CATEGORIES,
    TABLE_CSS,
    format_number,
    directions,
    higher_is_better,
    paired_differences,
    summary_table,
    to_html_fragment,
    to_markdown,
    uses_tiny_random,
    write_tables,
)
from harness.analyse import headline as headline_table  # noqa: E402
from harness.analyse import figures  # noqa: E402
from harness.analyse.costs import COST_NOTE, cost_table  # noqa: E402
from harness.analyse.grids import GRID_CSS  # noqa: E402
from harness.analyse.weights_legend import legend_html, weights_keys, with_short_weights  # noqa: E402
from harness.plan.identity import method_label  # noqa: E402,F401 - method_label is used by the study too
from harness.analyse.pair_table import grid_sample, write_pair_table  # noqa: E402
from harness.analyse.aggregate import INTERVAL_NOTE  # noqa: E402
from harness.store import (  # noqa: E402
    earlier_plan_note, read_pairs, read_plan_results, read_run_record, unreadable_results,
)

THUMBNAIL_PIXELS = 160
OUTLINE_COLOUR = (255, 40, 40)
REPORT_CSS = TABLE_CSS + """
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
""" + GRID_CSS
SUMMARY_KEYS = ("method", "preset", "category", "metric")  # preset: the preset and variant ("paper t_start=4")
PAIRED_NOTE = ("Pairs: the same pair, seed, task and object at the same point of the suite's sweep. Tests on per-pair "
               "mean differences: Wilcoxon signed-rank, the paired t-test below 6 pairs or when all differences are "
               "zero, none below 3 pairs; p_holm: Holm-corrected across the metrics of each comparison (one row group "
               "of method and reference).")


def write_report(run_dir: str | Path, out: str | Path | None = None, reference: str = "clic") -> Path:
    """Write the report of `run_dir` into `out` (default RUN/report) and return the path of index.html."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    plan_results, earlier_rows = read_plan_results(run_dir)  # read first: an unreadable run leaves the last report
    results = with_variants(plan_results)
    run_info = read_run_record(run_dir)
    read_pairs(run_dir)
    for folder in ("images", "plots", "tables"):
        shutil.rmtree(out / folder, ignore_errors=True)  # no stale files from an earlier report
        (out / folder).mkdir(parents=True)
    declared = directions(results)  # each metric's declaration, recorded in its rows

    summary = summary_table(results, by=SUMMARY_KEYS)
    paired = paired_differences(results, reference=reference)
    failures = failure_list(results)
    per_metric = metric_tables(summary)
    order = label_order(planned_labels(run_info), results)
    head = headline_table.headline(summary, declared, order)
    labels = ablation_labels(results, run_info)
    ablation = ablation_table(summary, labels)
    costs = cost_table(results, order)
    tables = {"summary": summary, "paired_differences": paired, "failures": failures, "costs": costs}
    write_tables({**tables, "ablations": ablation} if labels else tables, out / "tables")
    (out / "summary.md").write_text(
        _summary_markdown(head, per_metric, paired, failures, reference, ablation, declared, costs),
        encoding="utf-8")

    keys = weights_keys(results)
    plots = ReportFigures(
        per_metric=figures.metric_figures(summary, out / "plots", declared, order),
        headline=figures.headline_figure(summary, out / "plots", declared, order),
        paired=figures.paired_figure(paired, out / "plots", reference),
        tstart=figures.tstart_figure(results, out / "plots", declared),
        losses=figures.loss_figures(run_dir, results, out / "plots"))
    grids = image_grid_sections(run_dir, results, out, order)
    # Every pair's values in tables/pairs.{parquet,html}; the ablation grid (a row per pair) over a bounded,
    # stated sample of pairs (harness.analyse.pair_table.grid_sample).
    write_pair_table(results, out / "tables", f"{run_dir.name}: every pair")
    shown_pairs, sample_note = grid_sample(results, declared)
    sampled = results[results["pair_id"].isin(shown_pairs)] if "pair_id" in results.columns else results
    ablation_html = (_ablation_section(run_dir, sampled, run_info, labels, with_short_weights(ablation, keys), out)
                     + f"<p>Pairs of the grid: {html.escape(sample_note)}</p>"
                     + '<div class="plots">' + _figure(figures.headline_figure(
                         summary, out / "plots", declared, labels, only=labels, stem="ablations"),
                         figures.FIGURE_NOTE, wide=True) + "</div>"
                     if labels else "")
    page = _index_html(run_dir, run_info, results, head, per_metric, paired, failures, plots, grids, reference,
                       ablation_html, declared, costs, keys)
    page = page.replace('<a href="summary.md">summary.md</a> (with the full weights text).', '<a href="summary.md">'
                        'summary.md</a> (with the full weights text); every pair\'s values: <a href="tables/pairs.html">'
                        'pairs.html</a> (sortable), <a href="tables/pairs.parquet">pairs.parquet</a>.', 1)
    left_out = left_out_lines(run_dir) + ([earlier_plan_note(earlier_rows)] if earlier_rows else [])
    if left_out:  # said at the top of the page and of summary.md, and by `clic-bench report`
        note = "Left out of this report: " + "; ".join(left_out)
        page = page.replace("<nav>", f'<p class="warning">{html.escape(note)}</p><nav>', 1)
        with (out / "summary.md").open("a", encoding="utf-8") as summary_md:
            summary_md.write(f"\n## Left out\n\n" + "".join(f"- {line}\n" for line in left_out))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def left_out_lines(run_dir: Path) -> list[str]:
    """What the report could not use: result files that cannot be read (the next run redoes their jobs)."""
    return [f"{path.name} (unreadable: {why})" for path, why in unreadable_results(run_dir)]


def report_main(args: argparse.Namespace) -> int:
    """`clic-bench report RUN`: write the report and print where index.html is."""
    index = write_report(args.run, out=args.out, reference=args.reference)
    for line in left_out_lines(Path(args.run)):
        print(f"report: left out {line}", file=sys.stderr)
    earlier = read_plan_results(args.run)[1]
    if earlier:
        print(f"report: {earlier_plan_note(earlier)}", file=sys.stderr)
    print(f"report: {index}")
    return 0


# ---------------------------------------------------------------------------------------------- tables

# ---------------------------------------------------------------------------------------------- variants
# Suite entries of one method and preset that differ only in their learning overrides (the ablations of
# benchmarks/ablations.yaml) are told apart by the `variant` the plan gave them ("no_att", see
# harness.plan.identity); every table, plot and grid shows such a variant as its own preset, "clic/paper no_att".

def with_variants(results: pd.DataFrame) -> pd.DataFrame:
    """`results` plus `base_preset`; `preset` becomes "paper no_att" where the row's planned `variant` is set."""
    variants = (results["variant"] if "variant" in results.columns else pd.Series("", index=results.index))
    variants = variants.fillna("").astype(str)
    preset = results["preset"]
    named = preset.map(lambda value: isinstance(value, str) and bool(value)) if len(preset) else preset.astype(bool)
    joined = preset.where(~named, preset.astype(str) + " " + variants).str.strip() if variants.ne("").any() else preset
    # "paper no_att"; a preset that is no text (a method without presets) takes the variant alone, as before
    presets = joined.where(named | variants.eq(""), variants)
    return results.assign(base_preset=preset, variant=variants, preset=presets)


def ablation_labels(results: pd.DataFrame, run_info: Mapping[str, Any]) -> list[str]:
    """Labels of every preset and variant of the methods that have variants, in the suite file's order (the
    plan's method runs recorded in run.json)."""
    planned_runs = (run_info.get("plan") or {}).get("methods") or []
    # Variants of learning (the plan's method runs with a variant) are ablations; the points of a transfer sweep
    # ("t_start=4") are not: they have the t_start figure.
    varied = ({str(run.get("method")) for run in planned_runs if run.get("variant")} if planned_runs
              else set(results.loc[results["variant"].ne(""), "method"]))
    if not varied:
        return []
    present = {method_label(m, p) for m, p in zip(results["method"], results["preset"]) if m in varied}
    planned = planned_labels(run_info)
    ordered = [label for label in dict.fromkeys(planned) if label in present]
    return ordered + sorted(present - set(ordered))


def planned_labels(run_info: Mapping[str, Any]) -> list[str]:
    """Method labels in the suite file's order (the plan's method runs recorded in run.json)."""
    return [str(run.get("label")) for run in ((run_info.get("plan") or {}).get("methods") or []) if run.get("label")]


def label_order(planned: Sequence[str], results: pd.DataFrame) -> list[str]:
    """Every method label of `results` in the suite's order: each planned label followed by its sweep points
    ("clic/paper t_start=2", "… t_start=10", numbers in numeric order), then labels the plan does not name."""
    present = sorted({method_label(m, p) for m, p in zip(results.get("method", []), results.get("preset", []))},
                     key=_natural_key)
    ordered: list[str] = []
    for head in dict.fromkeys(planned):
        ordered += [label for label in present if (label == head or label.startswith(head + " "))
                    and label not in ordered]
    return ordered + [label for label in present if label not in ordered]


def _natural_key(text: str) -> list[object]:
    return [(0, float(part)) if re.fullmatch(r"\d+(\.\d+)?", part) else (1, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", text)]


def ablation_table(summary: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """A row per ablation label, a column per metric: "mean [CI] n=…" over all categories."""
    overall = summary[summary["category"].eq(ALL_CATEGORIES) & summary["metric"].notna()]
    overall = overall.assign(label=[method_label(m, p) for m, p in zip(overall["method"], overall["preset"])])
    overall = overall[overall["label"].isin(labels)]
    if overall.empty:
        return pd.DataFrame({"method": labels})
    cells = [cell_text(m, lo, hi, n) for m, lo, hi, n in zip(overall["mean"], overall["ci_low"], overall["ci_high"],
                                                            overall["n"])]
    table = overall.assign(cell=cells).pivot_table(index="label", columns="metric", values="cell", aggfunc="first")
    table["weights"] = overall.groupby("label")["weights"].agg(lambda w: ", ".join(sorted(set(w))))
    return table.reindex(labels).rename_axis(None, axis=1).reset_index().rename(columns={"label": "method"})


def cell_text(mean: float, low: float, high: float, n: int) -> str:
    """"mean [low, high] n=…", without the interval where there is none (fewer than 3 pairs)."""
    ci = f" [{format_number(low)}, {format_number(high)}]" if np.isfinite(low) else ""
    return f"{format_number(mean)}{ci} n={n}"


def metric_tables(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per metric: a row per method/preset, a column per category ("mean [CI] n=…")."""
    tables: dict[str, pd.DataFrame] = {}
    rated = summary[summary["metric"].notna()]
    failed = summary.drop_duplicates(["method", "preset", "category"]).set_index(["method", "preset", "category"])
    for metric, group in rated.groupby("metric", sort=True):
        group = group.assign(label=[method_label(m, p) for m, p in zip(group["method"], group["preset"])],
                             cell=[cell_text(m, lo, hi, n)
                                   + (headline_table.TINY_MARK if is_random_weights(w) else "")
                                   for m, lo, hi, n, w in zip(group["mean"], group["ci_low"], group["ci_high"],
                                                              group["n"], group["weights"])])
        table = group.pivot_table(index="label", columns="category", values="cell", aggfunc="first")
        categories = sorted(c for c in table.columns if c != ALL_CATEGORIES)
        table = table.reindex(columns=categories + ([ALL_CATEGORIES] if ALL_CATEGORIES in table.columns else []))
        per_method = group.drop_duplicates("label").set_index("label")
        table["n_failed"] = [int(failed.loc[(per_method.loc[label, "method"], per_method.loc[label, "preset"],
                                             ALL_CATEGORIES), "n_failed"]) for label in table.index]
        table["metric_scale"] = per_method.loc[table.index, "metric_scale"]
        table["weights"] = group.groupby("label")["weights"].agg(lambda w: ", ".join(sorted(set(w))))
        tables[str(metric)] = table.rename_axis(None, axis=1).reset_index().rename(columns={"label": "method"})
    return tables


def failure_list(results: pd.DataFrame) -> pd.DataFrame:
    """One row per failed job: job, method, preset, pair, task, error."""
    columns = ["job_id", "method", "preset", "pair_id", "task", "error"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    failed = results[results["status"].eq("failed")].drop_duplicates("job_id")
    return failed[columns].sort_values(["method", "preset", "pair_id"]).reset_index(drop=True)


def _direction(metric: str, declared: Mapping[str, bool]) -> str:
    return "higher is better" if higher_is_better(metric, declared) else "lower is better"


def _summary_markdown(head: headline_table.Headline, per_metric: Mapping[str, pd.DataFrame], paired: pd.DataFrame,
                      failures: pd.DataFrame, reference: str, ablation: pd.DataFrame,
                      declared: Mapping[str, bool], costs: pd.DataFrame | None = None) -> str:
    parts = ["# Results\n", headline_table.to_markdown(head),
             "## Per category\n", f"Mean [95% CI] per method and category ({INTERVAL_NOTE}); raw values "
             "(see metric_scale)"
             + (f"; {headline_table.TINY_MARK} tiny-random" if head.tiny_random else "") + ".\n"]
    for metric, table in per_metric.items():
        parts.append(f"### {metric} ({_direction(metric, declared)})\n\n{to_markdown(table, note='')}")
    if not ablation.empty:
        parts.append(f"## Ablations (all categories)\n\n{to_markdown(ablation, note='')}")
    parts.append(f"## Paired differences against {reference}\n\n{PAIRED_NOTE}\n\n{to_markdown(paired, note='')}")
    if costs is not None and not costs.empty:
        parts.append(f"## Costs\n\n{COST_NOTE}\n\n{to_markdown(costs, note='')}")
    parts.append(f"## Failed jobs: {len(failures)}\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- plots

def _slug(text: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


SLUG_CHARACTERS = 60  # file names stay far below the file systems' 255 bytes


def image_name(key: object, role: str) -> str:
    """The thumbnail file name of a pair or job id: its slug, plus a hash of the id wherever the slug is not the
    id itself (so "chair 1" and "chair-1" never share a file), is cut short (a 3000-character id) or has capitals
    ("Chair1" and "chair1" are one file name on macOS' and Windows' case-insensitive file systems)."""
    text = str(key)
    slug = _slug(text)
    if slug != text or len(slug) > SLUG_CHARACTERS or slug != slug.lower():
        slug = f"{slug[:SLUG_CHARACTERS]}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:10]}"
    return f"{slug}-{role}.png"


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


def image_grid_sections(run_dir: Path, results: pd.DataFrame, out: Path, order: Sequence[str]) -> dict[str, str]:
    """category → its image grids (a bounded sample, :mod:`harness.analyse.grids`)."""
    from harness.analyse import grids

    return grids.image_grids(run_dir, results, out, labels=order)


# ---------------------------------------------------------------------------------------------- images

def thumbnail(source: Path, dest: Path, mask: Path | None = None, pixels: int = THUMBNAIL_PIXELS) -> bool:
    """Save a copy of `source` at most `pixels` wide at `dest`, with the outline of `mask` in red when given."""
    try:
        with Image.open(source) as opened:
            image = opened.convert("RGB")
        image.thumbnail((pixels, pixels))
        if mask is not None and mask.is_file():
            with Image.open(mask) as opened:
                binary = opened.convert("L").resize(image.size, Image.NEAREST).point(lambda v: 255 if v > 127 else 0)
            inside = np.asarray(binary) > 0
            eroded = np.asarray(binary.filter(ImageFilter.MinFilter(3))) > 0
            pixels = np.asarray(image).copy()
            pixels[inside & ~eroded] = OUTLINE_COLOUR
            image = Image.fromarray(pixels)
        image.save(dest, compress_level=1)  # fast: thumbnails are small, size barely matters
    except (OSError, ValueError):  # a missing or unreadable artifact leaves an empty cell, not a crash
        return False
    return True


def manifest_pairs(run_dir: Path, run_info: Mapping[str, Any] | None = None) -> dict[str, dict[str, Path | None]]:
    """pair_id → source/target image and mask paths, from the pairs the run recorded (RUN/pairs.parquet)."""
    columns = ("source_image", "source_mask", "target_image", "target_mask")
    return {str(row["pair_id"]): {column: Path(row[column]) if row.get(column) else None for column in columns}
            for row in read_pairs(run_dir)}


def _ablation_section(run_dir: Path, results: pd.DataFrame, run_info: Mapping[str, Any], labels: list[str],
                      ablation: pd.DataFrame, out: Path) -> str:
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
            dest = out / "images" / image_name(by_label['job_id'].get(label), "image")
            ok = isinstance(artifact, str) and thumbnail(run_dir / artifact, dest)
            cells.append(f"<td>{_img(dest, out, label) if ok else ''}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<h2 id=\"ablations\">Ablations</h2><p>Mean [95% bootstrap CI] over all categories; columns of the grid "
            f"below in the suite file's order ({html.escape(str(task))} outputs, lowest seed).</p>"
            f"<div class=\"ablation\">{page_table(ablation, {})}</div>"
            f"<table class=\"grid\" id=\"ablation-grid\"><tr>{heads}</tr>{''.join(rows)}</table>")


def _img(path: Path, out: Path, alt: str) -> str:
    return f'<img src="{html.escape(path.relative_to(out).as_posix())}" alt="{html.escape(alt)}">'


# ---------------------------------------------------------------------------------------------- page

def _provenance(run_dir: Path, run_info: Mapping[str, Any], results: pd.DataFrame) -> str:
    suite = run_info.get("suite") if isinstance(run_info.get("suite"), Mapping) else {}
    models = (results.dropna(subset=["model_id"]).drop_duplicates(["method", "model_id", "weights_hash"])
              if not results.empty else results)
    metric_weights = (results.dropna(subset=["metric"]).drop_duplicates(["metric", "metric_weights"])
                      if not results.empty else results)
    facts = [
        ("run folder", str(run_dir)),
        ("suite", str(suite.get("name", ""))),
        ("code version", ", ".join(sorted(results["code_version"].dropna().unique())) if not results.empty else ""),
        ("host", json.dumps(run_info.get("host", ""), default=str)),
        ("git", str(run_info.get("git") or "")),
        ("start / end", f"{run_info.get('started_at', run_info.get('start', ''))} / "
                        f"{run_info.get('finished_at', run_info.get('end', ''))}"),
        ("counts", json.dumps(run_info.get("counts", {}), default=str)),
        ("versions", json.dumps(run_info.get("versions", {}), default=str, sort_keys=True)),
        ("models", "; ".join(f"{m}: {mid} (hash {h}, {label})" for m, mid, h, label in
                             models[["method", "model_id", "weights_hash", "weights_label"]].itertuples(index=False))
         if not models.empty else ""),
        ("metric weights", "; ".join(f"{m}: {w}" for m, w in
                                     metric_weights[["metric", "metric_weights"]].itertuples(index=False))
         if not metric_weights.empty else ""),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    suite_json = html.escape(json.dumps(suite, indent=2, default=str, sort_keys=True))
    return (f"<table class=\"results\">{rows}</table>\n<details><summary>suite</summary><pre>{suite_json}</pre>"
            f"</details>{_preset_sources(results)}")


def _preset_sources(results: pd.DataFrame) -> str:
    """Each declared method preset of the run, every setting with the source of its value
    (``clic methods show METHOD --preset PRESET``)."""
    from clic.presets import declared_settings, settings_table

    if results.empty:
        return ""
    blocks = []
    for method, preset in sorted(set(zip(results["method"].dropna(), results["preset"].dropna()))):
        declared = declared_settings(method, preset)
        if declared:
            rows = "".join(f"<tr><td>{html.escape(r['setting'])}</td><td>{html.escape(r['value'])}</td>"
                           f"<td>{html.escape(r['source'])}</td></tr>" for r in settings_table(declared))
            blocks.append(f"<details><summary>{html.escape(method)} --preset {html.escape(preset)}: settings and "
                          f"sources</summary><table class=\"results\"><tr><th>setting</th><th>value</th>"
                          f"<th>source</th></tr>{rows}</table></details>")
    return "".join(blocks)


PAIRED_PAGE_COLUMNS = ["metric", "method", "reference", "n_pairs", "mean_difference", "ci_low", "ci_high", "p_value",
                       "p_holm", "test", "weights"]


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
        reference=[method_label(r, p) for r, p in zip(paired["reference"], paired["reference_preset"])])
    return shown[PAIRED_PAGE_COLUMNS]


def _figure(src: str | None, caption: str, wide: bool = False) -> str:
    if not src:
        return ""
    wide_class = ' class="wide"' if wide else ""
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"{wide_class}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _by_figure(labels: Sequence[str], plots: Mapping[str, str]) -> dict[str, list[str]]:
    """Figure path ("" for none) → the labels it shows, in the order of `labels`."""
    grouped: dict[str, list[str]] = {}
    for label in labels:
        grouped.setdefault(plots.get(label, ""), []).append(label)
    return grouped


def _index_html(run_dir: Path, run_info: Mapping[str, Any], results: pd.DataFrame, head: headline_table.Headline,
                per_metric: Mapping[str, pd.DataFrame], paired: pd.DataFrame, failures: pd.DataFrame,
                plots: ReportFigures, grids: Mapping[str, str], reference: str, ablation_html: str = "",
                declared: Mapping[str, bool] | None = None, costs: pd.DataFrame | None = None,
                keys: Mapping[str, str] | None = None) -> str:
    from harness.analyse.grids import grid_note

    declared, keys = declared or {}, keys or {}
    tiny = uses_tiny_random(results)
    banner = f'<p class="warning">{html.escape(headline_table.TINY_FOOTNOTE)}</p>' if tiny else ""
    method_labels = sorted({method_label(m, p) for m, p in zip(results.get("method", []), results.get("preset", []))})
    nav = ['<a href="#headline">headline</a>', '<a href="#tables">per category</a>', '<a href="#paired">paired</a>',
           '<a href="#costs">costs</a>'] + (['<a href="#tstart">t_start</a>'] if plots.tstart else []) \
        + ['<a href="#provenance">provenance</a>'] + (['<a href="#ablations">ablations</a>'] if ablation_html else [])
    nav += ['<a href="#images">images</a>', '<a href="#losses">losses</a>']
    nav.append(f'<a href="#failures">failures ({len(failures)})</a>')

    body = [f"<nav>{' '.join(nav)}</nav>", f"<h1>Run report: {html.escape(run_dir.name)}</h1>", banner,
            f"<h2 id=\"headline\">All categories</h2><p>Mean and, under it, its 95% CI over every category "
            f"({INTERVAL_NOTE}; a cell without one says over how many pairs); ↑ higher is better, ↓ lower is better; "
            f"<strong>{headline_table.BEST_MARK}</strong> best of its column; n failed: the method's failed jobs. "
            f"Values are raw (see the scale by each per-category table).</p>"
            + headline_table.to_html(head)
            + f"<div class=\"plots\">{_figure(plots.headline, figures.FIGURE_NOTE, wide=True)}</div>",
            "<p>Tables as CSV/Markdown/HTML: <a href=\"tables/summary.csv\">summary.csv</a>, "
            "<a href=\"tables/paired_differences.csv\">paired_differences.csv</a>, "
            "<a href=\"tables/costs.csv\">costs.csv</a>, <a href=\"summary.md\">summary.md</a> (with the full "
            "weights text).</p>"]
    if plots.tstart:
        body.append("<h2 id=\"tstart\">t_start trade-off</h2><p>Each line is a method label through the values of "
                    "t_start the run swept (each point marked t=…): later t_start keeps more of the target outside "
                    "the region and transfers less inside it. Means over all categories; whiskers: 95% CI over "
                    "pairs (none below 3 pairs).</p>"
                    f"<div class=\"plots\">{_figure(plots.tstart, 't_start trade-off', wide=True)}</div>")
    body.append(f"<h2 id=\"tables\">Per category: mean [95% CI] n=values</h2><p>{INTERVAL_NOTE}; n counts values "
                f"(pairs × seeds). Each table is followed by its figure.</p>")
    for metric, table in per_metric.items():
        scale = ", ".join(sorted({str(v) for v in table.get("metric_scale", []) if str(v)}))
        body.append(f"<h3 id=\"metric-{_slug(metric)}\">{html.escape(metric)} ({_direction(metric, declared)}"
                    f"{'; ' + html.escape(scale) if scale else ''})</h3>"
                    + page_table(table.drop(columns=["metric_scale"], errors="ignore"), keys)
                    + f"<div class=\"plots\">{_figure(plots.per_metric.get(metric), figures.FIGURE_NOTE)}</div>")
    body.append(f"<h2 id=\"paired\">Paired differences (method − {html.escape(reference)})</h2>"
                f"<p>{html.escape(PAIRED_NOTE)} {html.escape(INTERVAL_NOTE)}.</p>"
                + page_table(paired_page_table(paired, declared), keys)
                + f"<div class=\"plots\">{_figure(plots.paired, figures.FIGURE_NOTE, wide=True)}</div>")
    body.append(f"<h2 id=\"costs\">Costs</h2><p>{html.escape(COST_NOTE)}</p>"
                + (page_table(costs, keys) if costs is not None and not costs.empty else "<p>No jobs.</p>"))
    body.append(f"<h2 id=\"provenance\">Provenance</h2>{_provenance(run_dir, run_info, results)}"
                + legend_html(keys))
    if ablation_html:
        body.append(ablation_html)
    body.append(f"<h2 id=\"images\">Images</h2><p>{html.escape(grid_note(results))}</p>")
    for category, grid in grids.items():
        body.append(f"<h3 id=\"cat-{_slug(category)}\">{html.escape(category)}</h3>{grid}")
    body.append("<h2 id=\"losses\">Methods: loss terms while learning</h2><p>A panel per term of each concept's "
                "losses.csv, a line per pair; labels that share their concepts (the points of a transfer sweep) "
                "share one figure.</p>")
    for plot, labels in _by_figure(method_labels, plots.losses).items():
        anchors = "".join(f'<span id="method-{_slug(label)}"></span>' for label in labels)
        image = (_figure(plot, "loss terms of " + ", ".join(labels), wide=True) if plot
                 else "<p>No loss curves recorded.</p>")
        body.append(f"<h3>{anchors}{html.escape(', '.join(labels))}</h3><div class=\"plots\">{image}</div>")
    body.append(f"<h2 id=\"failures\">Failed jobs ({len(failures)})</h2>"
                + (page_table(failures, keys) if not failures.empty else "<p>None.</p>"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(run_dir.name)} report</title><style>{REPORT_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
