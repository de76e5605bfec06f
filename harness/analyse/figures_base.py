"""What every report figure shares: the headless backend, file names, saving as PNG and SVG with the text
measured, the axis style, and the method labels of result rows."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on cluster nodes and in CI

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.plan.identity import method_label  # noqa: E402

__all__ = ["legend_below", "plt", "row_labels", "save_figure", "slug", "tidy_axis"]


def slug(text: object) -> str:
    """``text`` as a file-name stem."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


def save_figure(fig: plt.Figure, folder: Path, stem: str) -> str:
    """PNG and SVG of `fig` in `folder`, cropped to its drawn text (no clipped tick labels); the PNG's path
    relative to the report."""
    fig.savefig(folder / f"{stem}.png", dpi=100, bbox_inches="tight", pad_inches=0.08, pil_kwargs={"compress_level": 1})
    fig.savefig(folder / f"{stem}.svg", bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return f"plots/{stem}.png"


def tidy_axis(ax: plt.Axes) -> None:
    """At most five y ticks and a faint horizontal grid."""
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.grid(axis="y", linewidth=0.3, alpha=0.5)


def legend_below(ax: plt.Axes, count: int) -> None:
    """The legend under the axes, up to three columns."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(count, 3), frameon=False)


def row_labels(df: pd.DataFrame) -> list[str]:
    """Each row's method label (method/preset)."""
    return [method_label(m, p) for m, p in zip(df["method"], df["preset"])]
