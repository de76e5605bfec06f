"""Tables as people read them: numbers to four significant digits, CI columns merged, as Markdown, an HTML fragment
or standalone files, each preceded by the note that its numbers come from random weights when they do.
(Re-exported by :mod:`harness.analyse.aggregate`.)
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from clic import is_random_weights

TINY_RANDOM_NOTE = (
    "Numbers made with random-weight models (tiny-random, or random-weights of a real architecture): they test "
    "the pipeline, not the method."
)


def uses_tiny_random(df: pd.DataFrame) -> bool:
    """True when any row was made with tiny random weights, for the diffusion model or the metric."""
    columns = [c for c in ("weights_label", "metric_weights", "weights") if c in df.columns]
    return any(is_random_weights(value) for c in columns for value in df[c].dropna().unique())  # per distinct label


TABLE_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table.results { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
table.results th, table.results td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
table.results th { background: #f0f0f0; }
table.results td:first-child, table.results th:first-child { text-align: left; }
.warning { background: #fff3cd; border: 2px solid #e0a800; padding: 0.6em 1em; font-weight: bold; }
"""


def format_number(value: object) -> str:
    """Four significant digits; empty for missing values."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers rounded for reading, CI columns merged into one "[low, high]" column."""
    shown = table.copy()
    if {"ci_low", "ci_high"} <= set(shown.columns):
        ci = [
            f"[{format_number(lo)}, {format_number(hi)}]" if np.isfinite(lo) else ""
            for lo, hi in zip(shown["ci_low"].astype(float), shown["ci_high"].astype(float))
        ]
        position = shown.columns.get_loc("ci_low")
        shown = shown.drop(columns=["ci_low", "ci_high"])
        shown.insert(position, "95% CI", ci)
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(format_number)
    return shown.fillna("").astype(str)


def table_note(table: pd.DataFrame) -> str:
    """The line that must stand above a table made with tiny random weights ("" otherwise)."""
    return TINY_RANDOM_NOTE if uses_tiny_random(table) else ""


def to_markdown(table: pd.DataFrame, note: str | None = None) -> str:
    """A GitHub-flavoured Markdown table, preceded by the tiny-random note when it applies."""
    note = table_note(table) if note is None else note
    shown = _display(table)
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731 - tiny local helper
    lines = [
        "| " + " | ".join(escape(c) for c in shown.columns) + " |",
        "|" + "|".join("---" for _ in shown.columns) + "|",
    ]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return (note + "\n\n" if note else "") + "\n".join(lines) + "\n"


def to_html_fragment(table: pd.DataFrame, note: str | None = None) -> str:
    """The table as an HTML fragment (class "results"), with the tiny-random note above it (``note=""``: none,
    where the page says it once)."""
    note = table_note(table) if note is None else note
    prefix = f'<p class="warning">{html.escape(note)}</p>\n' if note else ""
    return prefix + _display(table).to_html(index=False, classes="results", border=0, escape=True)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Write each table as NAME.md, NAME.csv (full precision) and NAME.html (standalone, inline CSS)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        (out / f"{name}.md").write_text(to_markdown(table), encoding="utf-8")
        table.to_csv(out / f"{name}.csv", index=False)
        page = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(name)}</title>'
            f"<style>{TABLE_CSS}</style></head><body>\n{to_html_fragment(table)}</body></html>\n"
        )
        (out / f"{name}.html").write_text(page, encoding="utf-8")
        written += [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.html"]
    return written
