"""The paper's t_start trade-off figure: fidelity inside the region against preservation outside it, one line
per method label through the t_start values it ran."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analyse.aggregate import SUMMARY_COLUMNS, format_number, higher_is_better, summary_table
from harness.analyse.figures_base import plt, save_figure
from harness.plan.identity import method_label

# The t_start trade-off: fidelity inside the region (y) against preservation outside it (x), the first
# metric of each list that the run has.
FIDELITY_INSIDE = ("pattern_fidelity", "clip_i_roi", "lpips_inside")
PRESERVATION_OUTSIDE = ("psnr_outside", "ssim_outside", "lpips_outside")


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
            _draw_line(ax, points[points["line"].eq(line)], line, fidelity, metric, colours[i % len(colours)])
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


def _draw_line(ax: plt.Axes, part: pd.DataFrame, line: str, fidelity: str, metric: str, colour: str) -> None:
    """One method label's line (or point) through its t_start values: means, 95% CI whiskers where both axes have
    them, each point marked with its t_start."""
    y = part[part["metric"].eq(fidelity)].set_index("t_start")
    x = part[part["metric"].eq(metric)].set_index("t_start")
    shared = sorted(set(x.index) & set(y.index))
    if not shared:
        return
    x, y = x.loc[shared], y.loc[shared]
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
