"""The loss curves of the report: per method label, a panel per loss term of its concepts' losses.csv."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analyse.figures_base import plt, row_labels, save_figure, slug
from harness.analyse.images import local_file

LOSS_CURVES_PER_FIGURE = 6
NOT_LOSS_TERMS = ("step", "t")  # losses.csv columns that are not loss terms (the step, the timestep drawn)


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
    rows = rows.assign(label=row_labels(rows))
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
        path = local_file(run_dir / relative)  # a run on object storage: fetched as it is read
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
