"""The report's figures: one CI-bar figure per table (here), the t_start trade-off (:mod:`.figures_tstart`), and
the loss curves per term (:mod:`.figures_losses`), both re-exported here for the report.

Every interval drawn is the table's own (pairs resampled, seeds nested inside a drawn pair); where a table
has no interval (fewer than 3 pairs) the figure draws the mean as a hollow marker with no whisker, never a
zero-length bar. Figures are saved with their text measured (``bbox_inches="tight"``), so tick labels are
never clipped, as PNG (shown) and SVG (for papers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analyse.aggregate import ALL_CATEGORIES, higher_is_better
from harness.analyse.bootstrap import MIN_CLUSTERS
from harness.analyse.figures_base import legend_below, plt, row_labels, save_figure, slug, tidy_axis
from harness.analyse.figures_losses import loss_figures, smooth  # noqa: F401 - re-exported: the report draws them
from harness.analyse.figures_tstart import tstart_figure, tstart_points  # noqa: F401
from harness.plan.identity import method_label

FIGURE_NOTE = (
    f"Bars: means; whiskers: 95% CI (percentile bootstrap over pairs, seeds resampled inside each drawn "
    f"pair); a hollow marker without whisker: fewer than {MIN_CLUSTERS} pairs, no interval."
)


def ci_bars(
    ax: plt.Axes,
    groups: Sequence[str],
    series: Sequence[str],
    cells: Mapping[tuple[str, str], tuple[float, float, float]],
) -> None:
    """Grouped bars: x = `groups`, one bar per `series`; cells (group, series) → (mean, low, high). A whisker
    only where the cell has an interval; a cell without one is a hollow marker at its mean."""
    width = 0.8 / max(len(series), 1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(series):
        colour = colours[i % len(colours)]
        x = np.arange(len(groups)) - 0.4 + width * (i + 0.5)
        values = [cells.get((group, name), (np.nan, np.nan, np.nan)) for group in groups]
        mean, low, high = (np.array(v, dtype=float) for v in zip(*values)) if values else (np.array([]),) * 3
        with_ci = np.isfinite(mean) & np.isfinite(low) & np.isfinite(high)
        ax.bar(x[with_ci], mean[with_ci], width * 0.9, color=colour, alpha=0.75, label=name)
        ax.errorbar(
            x[with_ci],
            mean[with_ci],
            yerr=np.vstack([mean - low, high - mean])[:, with_ci].clip(0),
            fmt="none",
            ecolor="black",
            elinewidth=0.8,
            capsize=2,
        )
        without = np.isfinite(mean) & ~with_ci
        ax.plot(
            x[without],
            mean[without],
            "o",
            markerfacecolor="none",
            markeredgecolor=colour,
            label=None if with_ci.any() else name,
        )
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    tidy_axis(ax)


def metric_figures(
    summary: pd.DataFrame, folder: Path, declared: Mapping[str, bool], order: Sequence[str] = ()
) -> dict[str, str]:
    """The figure of each per-category table: a group of bars per category (then "all"), a bar per method label."""
    plots: dict[str, str] = {}
    rated = summary[summary["metric"].notna() & summary["n"].gt(0)]
    for metric, group in rated.groupby("metric", sort=True):
        group = group.assign(label=row_labels(group))
        categories = sorted(c for c in group["category"].unique() if c != ALL_CATEGORIES) + [ALL_CATEGORIES]
        series = _ordered(group["label"], order)
        cells = {
            (c, label): (m, lo, hi)
            for c, label, m, lo, hi in zip(
                group["category"], group["label"], group["mean"], group["ci_low"], group["ci_high"]
            )
        }
        fig, ax = plt.subplots(figsize=(min(2.0 + 0.25 * len(categories) * len(series), 7.5), 3.0))
        ci_bars(ax, categories, series, cells)
        direction = "higher is better" if higher_is_better(str(metric), declared) else "lower is better"
        ax.set_title(f"{metric} ({direction}): mean, 95% CI over pairs", fontsize=9)
        legend_below(ax, len(series))
        plots[str(metric)] = save_figure(fig, folder, f"metric-{slug(metric)}")
    return plots


def _ordered(labels: pd.Series | Sequence[str], order: Sequence[str]) -> list[str]:
    present = set(map(str, labels))
    return [label for label in dict.fromkeys(order) if label in present] + sorted(present - set(order))


def headline_figure(
    summary: pd.DataFrame,
    folder: Path,
    declared: Mapping[str, bool],
    order: Sequence[str] = (),
    only: Sequence[str] | None = None,
    stem: str = "headline",
) -> str | None:
    """The headline table's figure: a panel per metric, a bar per method label (all categories); `only`: just
    these labels (the ablation table's figure)."""
    overall = summary[summary["category"].eq(ALL_CATEGORIES) & summary["metric"].notna() & summary["n"].gt(0)]
    overall = overall.assign(label=row_labels(overall))
    if only is not None:
        overall = overall[overall["label"].isin(set(only))]
    if overall.empty:
        return None
    metrics = sorted(overall["metric"].astype(str).unique())
    cells = {
        (str(metric), label): (m, lo, hi)
        for metric, label, m, lo, hi in zip(
            overall["metric"], overall["label"], overall["mean"], overall["ci_low"], overall["ci_high"]
        )
    }
    titles = {m: f"{m} {'↑' if higher_is_better(m, declared) else '↓'}" for m in metrics}
    return _panels(metrics, _ordered(overall["label"], order), cells, titles, folder, stem)


def paired_figure(paired: pd.DataFrame, folder: Path) -> str | None:
    """The paired-differences table's figure: a panel per metric (their scales differ), a bar per comparison
    (method label − reference label) with its interval (a hollow marker where there is none), and the zero line."""
    rows = paired.dropna(subset=["mean_difference"]) if not paired.empty else paired
    if rows.empty:
        return None
    rows = rows.assign(
        label=[
            f"{method_label(m, p)} − {method_label(ref, r)}"
            for m, p, ref, r in zip(rows["method"], rows["preset"], rows["reference"], rows["reference_preset"])
        ]
    )
    metrics = sorted(rows["metric"].astype(str).unique())
    series = sorted(rows["label"].unique())
    return _panels(
        metrics,
        series,
        {
            (str(metric), label): (d, lo, hi)
            for metric, label, d, lo, hi in zip(
                rows["metric"], rows["label"], rows["mean_difference"], rows["ci_low"], rows["ci_high"]
            )
        },
        {metric: metric for metric in metrics},
        folder,
        "paired-differences",
        zero_line=True,
    )


def _panels(
    metrics: Sequence[str],
    series: Sequence[str],
    cells: Mapping[tuple[str, str], tuple[float, float, float]],
    titles: Mapping[str, str],
    folder: Path,
    stem: str,
    zero_line: bool = False,
) -> str:
    """A panel per metric (4 a row), a bar per series, one legend under all of them."""
    columns = min(len(metrics), 4)
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 2.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        ci_bars(ax, [metric], series, {key: value for key, value in cells.items() if key[0] == metric})
        ax.set_xticks([])
        ax.set_title(titles[metric], fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        if zero_line:
            ax.axhline(0, color="black", linewidth=0.6)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.subplots_adjust(hspace=0.35, wspace=0.5)
    fig.legend(
        handles,
        names,
        loc="upper center",
        ncol=min(len(series), 3),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.02),
    )
    return save_figure(fig, folder, stem)
