"""The report's figures: one CI-bar figure per table, the t_start trade-off, and the loss curves per term.

Every interval drawn is the table's own (pairs resampled, seeds nested inside a drawn pair); where a table
has no interval (fewer than 3 pairs) the figure draws the mean as a hollow marker with no whisker, never a
zero-length bar. Figures are saved with their text measured (``bbox_inches="tight"``), so tick labels are
never clipped, as PNG (shown) and SVG (for papers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on cluster nodes and in CI

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.analyse.aggregate import (  # noqa: E402
    ALL_CATEGORIES,
    SUMMARY_COLUMNS,
    format_number,
    higher_is_better,
    summary_table,
)
from harness.analyse.bootstrap import MIN_CLUSTERS  # noqa: E402
from harness.analyse.images import local_file  # noqa: E402
from harness.plan.identity import method_label  # noqa: E402

FIGURE_NOTE = (
    f"Bars: means; whiskers: 95% CI (percentile bootstrap over pairs, seeds resampled inside each drawn "
    f"pair); a hollow marker without whisker: fewer than {MIN_CLUSTERS} pairs, no interval."
)
# The t_start trade-off: fidelity inside the region (y) against preservation outside it (x), the first
# metric of each list that the run has.
FIDELITY_INSIDE = ("pattern_fidelity", "clip_i_roi", "lpips_inside")
PRESERVATION_OUTSIDE = ("psnr_outside", "ssim_outside", "lpips_outside")
LOSS_CURVES_PER_FIGURE = 6
NOT_LOSS_TERMS = ("step", "t")  # losses.csv columns that are not loss terms (the step, the timestep drawn)


def slug(text: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


def save_figure(fig: plt.Figure, folder: Path, stem: str) -> str:
    """PNG and SVG of `fig` in `folder`, cropped to its drawn text (no clipped tick labels); the PNG's path
    relative to the report."""
    fig.savefig(folder / f"{stem}.png", dpi=100, bbox_inches="tight", pad_inches=0.08, pil_kwargs={"compress_level": 1})
    fig.savefig(folder / f"{stem}.svg", bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return f"plots/{stem}.png"


def _tidy_axis(ax: plt.Axes) -> None:
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.grid(axis="y", linewidth=0.3, alpha=0.5)


def _legend_below(ax: plt.Axes, count: int) -> None:
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(count, 3), frameon=False)


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
    _tidy_axis(ax)


def _labels(df: pd.DataFrame) -> list[str]:
    return [method_label(m, p) for m, p in zip(df["method"], df["preset"])]


def metric_figures(
    summary: pd.DataFrame, folder: Path, declared: Mapping[str, bool], order: Sequence[str] = ()
) -> dict[str, str]:
    """The figure of each per-category table: a group of bars per category (then "all"), a bar per method label."""
    plots: dict[str, str] = {}
    rated = summary[summary["metric"].notna() & summary["n"].gt(0)]
    for metric, group in rated.groupby("metric", sort=True):
        group = group.assign(label=_labels(group))
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
        _legend_below(ax, len(series))
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
    overall = overall.assign(label=_labels(overall))
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


def paired_figure(paired: pd.DataFrame, folder: Path, reference: str) -> str | None:
    """The paired-differences table's figure: a panel per metric (their scales differ), a bar per comparison
    (method label − reference label) with its interval (a hollow marker where there is none), and the zero line."""
    rows = paired.dropna(subset=["mean_difference"]) if not paired.empty else paired
    if rows.empty:
        return None
    rows = rows.assign(
        label=[
            f"{method_label(m, p)} − {method_label(reference, r)}"
            for m, p, r in zip(rows["method"], rows["preset"], rows["reference_preset"])
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


# ---------------------------------------------------------------------------------------------- t_start


def trade_off_label(method: str, base_preset: str, variant: str) -> str:
    """The method label without its t_start: the line a t_start sweep draws ("clic/paper", "clic/paper no_att")."""
    rest = " ".join(part for part in str(variant or "").split() if not part.startswith("t_start="))
    return method_label(method, base_preset, rest)


def tstart_points(results: pd.DataFrame) -> pd.DataFrame:
    """Per (line label, t_start, metric): n, n_pairs, mean, 95% CI over all categories, for the t_start trade-off.
    `results` has the report's variant columns (``base_preset``, ``variant``); an empty frame when no method
    label was run at two values of t_start."""
    if results.empty or "t_start" not in results.columns:
        return pd.DataFrame()
    wanted = set(FIDELITY_INSIDE) | set(PRESERVATION_OUTSIDE)
    read = {"method", "preset", "base_preset", "variant", "t_start", *SUMMARY_COLUMNS}  # not every column's copy
    rows = results.loc[results["metric"].isin(wanted), [c for c in results.columns if c in read]]
    if rows.empty:
        return pd.DataFrame()
    base = rows["base_preset"] if "base_preset" in rows else rows["preset"]
    keys = pd.DataFrame(
        {
            "m": rows["method"].to_numpy(object),
            "b": base.to_numpy(object),
            "v": rows["variant"].fillna("").to_numpy(object),
        },
        index=rows.index,
    )
    codes = keys.groupby(["m", "b", "v"], dropna=False, sort=False).ngroup().to_numpy()
    lines = np.array(
        [trade_off_label(*key) for key in keys.drop_duplicates().itertuples(index=False, name=None)], dtype=object
    )
    rows = rows.assign(
        line=lines[codes] if len(keys) else [],  # one label per distinct method, preset and variant
        t_start=pd.to_numeric(rows["t_start"], errors="coerce"),
    )
    swept = rows.dropna(subset=["t_start"]).groupby("line")["t_start"].nunique()
    if not (swept >= 2).any():
        return pd.DataFrame()
    return summary_table(rows.assign(t_start=rows["t_start"].fillna(-1.0)), by=("line", "t_start", "metric"))


def tstart_figure(results: pd.DataFrame, folder: Path, declared: Mapping[str, bool]) -> str | None:
    """The paper's t_start trade-off: fidelity inside the region (y) against preservation outside it (x), a panel
    per preservation metric, one line per method label through its t_start values (each point marked with its
    t_start); a method that reads no t_start is one point. None when the run sweeps no t_start."""
    points = tstart_points(results)
    if points.empty:
        return None
    metrics = set(points["metric"].astype(str))
    fidelity = next((m for m in FIDELITY_INSIDE if m in metrics), None)
    outside = [m for m in PRESERVATION_OUTSIDE if m in metrics]
    if fidelity is None or not outside:
        return None
    fig, axes = plt.subplots(1, len(outside), figsize=(3.6 * len(outside), 3.3), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = sorted(points["line"].unique())
    for ax, metric in zip(axes.flat, outside):
        for i, line in enumerate(lines):
            part = points[points["line"].eq(line)]
            y = part[part["metric"].eq(fidelity)].set_index("t_start")
            x = part[part["metric"].eq(metric)].set_index("t_start")
            shared = sorted(set(x.index) & set(y.index))
            if not shared:
                continue
            x, y = x.loc[shared], y.loc[shared]
            colour = colours[i % len(colours)]
            style = "-o" if len(shared) > 1 else "s"
            ax.plot(
                x["mean"],
                y["mean"],
                style,
                color=colour,
                markersize=4,
                linewidth=1.2,
                label=line if len(shared) > 1 else f"{line} (no t_start)",
            )
            has_ci = np.isfinite(x["ci_low"]) & np.isfinite(y["ci_low"])
            ax.errorbar(
                x["mean"][has_ci],
                y["mean"][has_ci],
                xerr=np.vstack([x["mean"] - x["ci_low"], x["ci_high"] - x["mean"]])[:, has_ci].clip(0),
                yerr=np.vstack([y["mean"] - y["ci_low"], y["ci_high"] - y["mean"]])[:, has_ci].clip(0),
                fmt="none",
                ecolor=colour,
                elinewidth=0.6,
                alpha=0.6,
                capsize=1.5,
            )
            for t, xv, yv in zip(shared, x["mean"], y["mean"]):
                if t >= 0:
                    ax.annotate(
                        f"t={format_number(float(t))}",
                        (xv, yv),
                        textcoords="offset points",
                        xytext=(4, 3),
                        fontsize=7,
                        color=colour,
                    )
        arrow_x = "→ better" if higher_is_better(metric, declared) else "← better"
        arrow_y = "↑ better" if higher_is_better(fidelity, declared) else "↓ better"
        ax.set_xlabel(f"{metric} (preservation outside, {arrow_x})", fontsize=8)
        ax.set_ylabel(f"{fidelity} (inside, {arrow_y})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(linewidth=0.3, alpha=0.5)
    axes.flat[0].legend(
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5 * len(outside) + 0.1 * (len(outside) - 1), -0.22),
        ncol=min(len(lines), 3),
        frameon=False,
    )
    fig.suptitle(
        "t_start trade-off: fidelity inside vs preservation outside (all categories; whiskers: 95% CI over pairs)",
        fontsize=9,
    )
    fig.subplots_adjust(wspace=0.35)
    return save_figure(fig, folder, "tstart-tradeoff")


# ---------------------------------------------------------------------------------------------- losses


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean over `window` steps (shorter at the ends), the trend of a noisy loss."""
    series = pd.Series(np.asarray(values, dtype=float))
    return series.rolling(window, center=True, min_periods=1).mean().to_numpy()


def loss_figures(
    run_dir: Path, results: pd.DataFrame, folder: Path, per_figure: int = LOSS_CURVES_PER_FIGURE
) -> dict[str, str]:
    """Method label → the figure of its concepts' loss terms: a panel per term of losses.csv (con, att, roi, …,
    total), a line per concept labelled by its pair, smoothed with the raw trace faint. Labels that share their
    concepts (the points of a transfer sweep) share one figure; at most `per_figure` concepts each (the first
    pairs in pair-id order)."""
    if results.empty or "concept_id" not in results:
        return {}
    rows = results.dropna(subset=["concept_id"]).drop_duplicates(["method", "preset", "concept_id"])
    rows = rows.assign(label=_labels(rows))
    by_concepts: dict[tuple[str, ...], list[str]] = {}
    concept_rows: dict[tuple[str, ...], pd.DataFrame] = {}
    for label, group in rows.groupby("label", sort=True):
        key = tuple(sorted(group["concept_id"].astype(str).unique()))
        by_concepts.setdefault(key, []).append(str(label))
        concept_rows[key] = group
    plots: dict[str, str] = {}
    for key, labels in by_concepts.items():
        group = concept_rows[key].drop_duplicates("concept_id").sort_values(["pair_id", "concept_id"])
        curves = _loss_curves(run_dir, group, per_figure)
        terms = [c for c in dict.fromkeys(c for _, table in curves for c in table.columns) if c not in NOT_LOSS_TERMS]
        terms = [t for t in terms if t != "total"] + (["total"] if "total" in terms else [])
        if not curves or not terms:
            continue
        fig, axes = plt.subplots(1, len(terms), figsize=(min(2.6 * len(terms), 10.5), 2.6), squeeze=False)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        steps = max(len(table) for _, table in curves)
        window = max(1, steps // 10)
        for ax, term in zip(axes.flat, terms):
            for i, (name, table) in enumerate(curves):
                if term not in table.columns:
                    continue
                colour = colours[i % len(colours)]
                ax.plot(table["step"], table[term], color=colour, linewidth=0.6, alpha=0.25)
                ax.plot(table["step"], smooth(table[term].to_numpy(), window), color=colour, linewidth=1.2, label=name)
            ax.set_title(term, fontsize=8)
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=7)
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            loc="lower center",
            ncol=min(len(curves), 4),
            fontsize=7,
            frameon=False,
            bbox_to_anchor=(0.5, -0.12 - 0.06 * (len(curves) // 4)),
        )
        shown = f"{len(curves)} of {group['concept_id'].nunique()} concepts"
        fig.suptitle(
            f"{_short_labels(labels)}: loss terms ({shown}); running mean over {window} steps, raw faint", fontsize=8
        )
        fig.subplots_adjust(wspace=0.35, top=0.8)
        src = save_figure(fig, folder, f"losses-{slug(labels[0])}")
        plots.update(dict.fromkeys(labels, src))
    return plots


def _loss_curves(run_dir: Path, group: pd.DataFrame, per_figure: int) -> list[tuple[str, pd.DataFrame]]:
    """(pair id, losses.csv) of the first ``per_figure`` concepts of ``group`` whose file reads; those without a
    step column are left out."""
    curves = []
    for row in group.itertuples(index=False):
        losses_path = getattr(row, "artifact_losses", None)
        relative = losses_path if isinstance(losses_path, str) else f"concepts/{row.concept_id}/losses.csv"
        path = local_file(run_dir / relative)
        if path.is_file():
            try:
                curves.append(
                    (str(row.pair_id) if pd.notna(row.pair_id) else str(row.concept_id)[:10], pd.read_csv(path))
                )
            except (OSError, ValueError):
                continue
        if len(curves) == per_figure:
            break
    return [(name, table) for name, table in curves if "step" in table.columns]


def _short_labels(labels: Sequence[str]) -> str:
    """ "clic/paper t_start=2, 4, 6" for labels that differ only after a shared head."""
    if len(labels) == 1:
        return labels[0]
    head = labels[0].split(" ")[0]
    if all(label.split(" ")[0] == head for label in labels):
        tails = [" ".join(label.split(" ")[1:]) for label in labels]
        return f"{head} ({', '.join(t or 'plain' for t in tails)})"
    return ", ".join(labels)
