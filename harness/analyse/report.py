"""The static report of a run folder: RUN/report/index.html plus summary.md, CSV tables and plots.

The folder is self-contained: CSS is inline, images are thumbnails copied into report/images/, plots are
PNG/SVG under report/plots/, and every link is relative, so it opens from disk (or from a zip) with no
server and nothing fetched from the network. This module writes the report; its tables are
:mod:`harness.analyse.report_tables`, its page :mod:`harness.analyse.report_page`, its thumbnails
:mod:`harness.analyse.images` (their public names are re-exported here).
"""

from __future__ import annotations

import argparse
import html
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analyse import figures
from harness.analyse import headline as headline_table
from harness.analyse.aggregate import directions, summary_table, write_tables
from harness.analyse.costs import cost_table
from harness.analyse.images import OUTLINE_COLOUR, THUMBNAIL_PIXELS, image_name, thumbnail  # noqa: F401 - re-exported
from harness.analyse.pair_table import grid_sample, write_pair_table
from harness.analyse.paired import paired_differences, unknown_reference
from harness.analyse.report_page import (  # noqa: F401
    REPORT_CSS,
    ReportFigures,
    ablation_section,
    figure_html,
    index_html,
    manifest_pairs,
    page_table,
    paired_page_table,
)
from harness.analyse.report_tables import (  # noqa: F401
    PAIRED_NOTE,
    SUMMARY_KEYS,
    ablation_labels,
    ablation_reference,
    ablation_rows,
    ablation_table,
    cell_text,
    failure_list,
    label_order,
    metric_tables,
    planned_labels,
    summary_markdown,
    with_variants,
)
from harness.analyse.weights_legend import weights_keys, with_short_weights
from harness.errors import UsageError
from harness.plan.identity import method_label  # noqa: F401 - method_label is used by the study too
from harness.store import (
    earlier_plan_note,
    read_pairs,
    read_plan_results,
    read_run_record,
    unreadable_results,
)

DEFAULT_REFERENCE = "clic"


def write_report(run_dir: str | Path, out: str | Path | None = None, reference: str | None = None) -> Path:
    """Write the report of `run_dir` into `out` (default RUN/report) and return the path of index.html.

    ``reference``: the method or the method label the paired differences are taken against. One the run does not
    have is a :class:`UsageError` before anything is written; the default, clic, pairs nothing in a run without
    it."""
    return _write_report(run_dir, out, reference)[0]


def _write_report(run_dir: str | Path, out: str | Path | None, reference: str | None) -> tuple[Path, list[str], int]:
    """:func:`write_report`, plus what it left out: the unreadable result files' lines and the rows of earlier
    plans (`clic-bench report` says both without reading the folder again)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    plan_results, earlier_rows = read_plan_results(run_dir)  # read first: an unreadable run leaves the last report
    results = with_variants(plan_results)
    reference = _checked_reference(results, reference)
    run_info = read_run_record(run_dir)
    read_pairs(run_dir, only=())  # an unreadable pairs file stops here, before the last report is removed
    _fresh_report_folder(out)
    declared = directions(results)  # each metric's declaration, recorded in its rows

    summary = summary_table(results, by=SUMMARY_KEYS)
    paired = paired_differences(results, reference=reference)
    failures = failure_list(results)
    per_metric = metric_tables(summary)
    order = label_order(planned_labels(run_info), results)
    head = headline_table.headline(summary, declared, order)
    labels = ablation_labels(results, run_info)
    ablation = ablation_table(summary, labels)
    ablation_paired = _ablation_paired(results, run_info, reference)
    costs = cost_table(results, order)
    tables = {"summary": summary, "paired_differences": paired, "failures": failures, "costs": costs}
    write_tables({**tables, **_ablation_tables(labels, ablation, ablation_paired)}, out / "tables")
    (out / "summary.md").write_text(
        summary_markdown(head, per_metric, paired, failures, reference, ablation, declared, costs, ablation_paired),
        encoding="utf-8",
    )

    keys = weights_keys(results)
    plots = _report_figures(run_dir, results, summary, paired, declared, order, out / "plots")
    grids = image_grid_sections(run_dir, results, out, order)
    # Every pair's values in tables/pairs.{parquet,html}; the ablation grid (a row per pair) over a bounded,
    # stated sample of pairs (harness.analyse.pair_table.grid_sample).
    write_pair_table(results, out / "tables", f"{run_dir.name}: every pair")
    ablations = (labels, ablation, ablation_paired)
    ablation_html = _ablation_html(run_dir, results, run_info, summary, declared, ablations, keys, out)
    page = index_html(
        run_dir,
        run_info,
        results,
        head,
        per_metric,
        paired,
        failures,
        plots,
        grids,
        reference,
        ablation_html,
        declared,
        costs,
        keys,
    )
    unreadable = left_out_lines(run_dir)
    page = _note_left_out(page, out, unreadable + ([earlier_plan_note(earlier_rows)] if earlier_rows else []))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index, unreadable, earlier_rows


def _checked_reference(results: pd.DataFrame, reference: str | None) -> str:
    """The reference to pair against: the one given, which must be a method or method label of the run (one line
    otherwise), or clic by default (a run without it pairs nothing)."""
    problem = unknown_reference(results, reference) if reference is not None else None
    if problem:
        raise UsageError(f"--reference {problem}")
    return reference or DEFAULT_REFERENCE


def _ablation_tables(
    labels: list[str], ablation: pd.DataFrame, paired: tuple[str, pd.DataFrame] | None
) -> dict[str, pd.DataFrame]:
    """The ablation tables of tables/: the variants' means, and their paired differences against the plain label."""
    return {**({"ablations": ablation} if labels else {}), **({"ablations_paired": paired[1]} if paired else {})}


def _fresh_report_folder(out: Path) -> None:
    for folder in ("images", "plots", "tables"):
        shutil.rmtree(out / folder, ignore_errors=True)  # no stale files from an earlier report
        (out / folder).mkdir(parents=True)


def _note_left_out(page: str, out: Path, left_out: list[str]) -> str:
    """What the report could not use, said at the top of the page and of summary.md (and by `clic-bench report`)."""
    if not left_out:
        return page
    note = "Left out of this report: " + "; ".join(left_out)
    with (out / "summary.md").open("a", encoding="utf-8") as summary_md:
        summary_md.write("\n## Left out\n\n" + "".join(f"- {line}\n" for line in left_out))
    return page.replace("<nav>", f'<p class="warning">{html.escape(note)}</p><nav>', 1)


def _report_figures(
    run_dir: Path,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    declared: Mapping[str, bool],
    order: Sequence[str],
    plots: Path,
) -> ReportFigures:
    """Draw the report's figures into ``plots``."""
    return ReportFigures(
        per_metric=figures.metric_figures(summary, plots, declared, order),
        headline=figures.headline_figure(summary, plots, declared, order),
        paired=figures.paired_figure(paired, plots),
        tstart=figures.tstart_figure(results, plots, declared),
        losses=figures.loss_figures(run_dir, results, plots),
    )


def _ablation_html(
    run_dir: Path,
    results: pd.DataFrame,
    run_info: Mapping[str, Any],
    summary: pd.DataFrame,
    declared: Mapping[str, bool],
    ablations: tuple[list[str], pd.DataFrame, tuple[str, pd.DataFrame] | None],
    keys: Mapping[str, str],
    out: Path,
) -> str:
    """The ablation section: its table, each variant's paired difference against the reference method's plain
    label (when the reference method has variants), its image grid over a bounded sample of pairs, and its
    figure ("" for a run without variants)."""
    labels, ablation, paired = ablations
    if not labels:
        return ""
    shown_pairs, sample_note = grid_sample(results, declared)
    sampled = results[results["pair_id"].isin(shown_pairs)] if "pair_id" in results.columns else results
    section = ablation_section(run_dir, sampled, run_info, labels, with_short_weights(ablation, keys), out)
    if paired is not None:  # under the table of means, above the grid
        grid = '<table class="grid" id="ablation-grid">'
        section = section.replace(grid, _ablation_paired_html(paired, declared, keys) + grid, 1)
    return (
        section
        + f"<p>Pairs of the grid: {html.escape(sample_note)}</p>"
        + '<div class="plots">'
        + figure_html(
            figures.headline_figure(summary, out / "plots", declared, labels, only=labels, stem="ablations"),
            figures.FIGURE_NOTE,
            wide=True,
        )
        + "</div>"
    )


def _ablation_paired(
    results: pd.DataFrame, run_info: Mapping[str, Any], reference: str
) -> tuple[str, pd.DataFrame] | None:
    """(the reference method's plain label, each of its variants' paired differences against it), or None when
    the reference method has no variants."""
    base = ablation_reference(results, run_info, reference)
    return (base, paired_differences(ablation_rows(results, base), reference=base)) if base else None


def _ablation_paired_html(
    paired: tuple[str, pd.DataFrame], declared: Mapping[str, bool], keys: Mapping[str, str]
) -> str:
    base, table = paired
    return (
        f'<h3 id="ablations-paired">Paired differences (variant − {html.escape(base)})</h3>'
        f"<p>{html.escape(PAIRED_NOTE)}</p>" + page_table(paired_page_table(table, declared), keys)
    )


def left_out_lines(run_dir: Path) -> list[str]:
    """What the report could not use: result files that cannot be read (the next run redoes their jobs)."""
    return [f"{path.name} (unreadable: {why})" for path, why in unreadable_results(run_dir)]


def report_main(args: argparse.Namespace) -> int:
    """`clic-bench report RUN`: write the report and print where index.html is (RUN may be ``s3://…``)."""
    from harness.remote_folder import is_remote

    if is_remote(args.run):
        return _remote_report(args)
    index, unreadable, earlier = _write_report(args.run, args.out, args.reference)
    _say_left_out(unreadable, earlier)
    print(f"report: {index}")
    return 0


def _remote_report(args: argparse.Namespace) -> int:
    """The report of a run folder on object storage (:mod:`harness.analyse.remote_runs`), pushed to
    ``RUN/report`` (or written to a local ``--out``)."""
    from harness.analyse.images import fetched_on_read
    from harness.analyse.remote_runs import staged_run
    from harness.errors import UsageError
    from harness.remote_folder import is_remote

    if args.out is not None and is_remote(args.out):
        raise UsageError(
            f"--out: {args.out}: a report of a run on object storage goes to RUN/report, or to a local --out"
        )
    remote = staged_run(args.run)
    with fetched_on_read(remote.local, remote.fetch_file):
        index, unreadable, earlier = _write_report(remote.local, args.out, args.reference)
    _say_left_out(unreadable, earlier)
    if args.out is None:
        remote.push_report(index.parent)
        print(f"report: {remote.uri}/{index.relative_to(remote.local).as_posix()} (local copy: {index})")
    else:
        print(f"report: {index}")
    return 0


def _say_left_out(unreadable: list[str], earlier: int) -> None:
    for line in unreadable:
        print(f"report: left out {line}", file=sys.stderr)
    if earlier:
        print(f"report: {earlier_plan_note(earlier)}", file=sys.stderr)


def image_grid_sections(run_dir: Path, results: pd.DataFrame, out: Path, order: Sequence[str]) -> dict[str, str]:
    """category → its image grids (a bounded sample, :mod:`harness.analyse.grids`)."""
    from harness.analyse import grids

    return grids.image_grids(run_dir, results, out, labels=order)
