"""The headline table of a report: method × metric over all categories, like the paper's Table 2.

Each cell is the mean with its 95 % bootstrap CI; a column header carries its direction (↑ higher is better,
↓ lower is better) and the best method of the column is marked (bold, ★ in plain text); ``n failed`` counts a
method's failed jobs. A cell made with tiny random weights (diffusion model or metric) carries a dagger (†),
explained once above the table, instead of a banner over every table.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clic import is_random_weights
from harness.analyse.aggregate import ALL_CATEGORIES, INTERVAL_NOTE, TINY_RANDOM_NOTE, format_number, higher_is_better
from harness.analyse.bootstrap import MIN_CLUSTERS
from harness.plan.identity import method_label

TINY_MARK = "†"
BEST_MARK = "★"
TINY_FOOTNOTE = f"{TINY_MARK} {TINY_RANDOM_NOTE}"


@dataclass(frozen=True)
class Cell:
    mean: float
    ci_low: float
    ci_high: float
    n: int
    tiny_random: bool
    best: bool = False
    n_pairs: int = 0

    def text(self) -> str:
        ci = f" [{format_number(self.ci_low)}, {format_number(self.ci_high)}]" if np.isfinite(self.ci_low) else ""
        return f"{format_number(self.mean)}{ci}{TINY_MARK if self.tiny_random else ''}"


@dataclass(frozen=True)
class Headline:
    """Rows (method labels) × columns (metric values) of cells, with each column's direction."""

    methods: list[str]
    metrics: list[str]
    higher: dict[str, bool]
    cells: dict[tuple[str, str], Cell]
    n_failed: dict[str, int]

    @property
    def tiny_random(self) -> bool:
        return any(cell.tiny_random for cell in self.cells.values())

    def header(self, metric: str) -> str:
        return f"{metric} {'↑' if self.higher[metric] else '↓'}"


def headline(summary: pd.DataFrame, declared: Mapping[str, bool], order: Sequence[str] = ()) -> Headline:
    """The headline of a summary table (``harness.analyse.aggregate.summary_table`` by method, preset,
    category, metric); ``order`` lists method labels in the suite's order (others follow, sorted)."""
    overall = summary[summary["category"].eq(ALL_CATEGORIES)]
    labels = [method_label(m, p) for m, p in zip(overall["method"], overall["preset"])]
    overall = overall.assign(label=labels)
    present = set(labels)
    methods = [label for label in dict.fromkeys(order) if label in present] + sorted(present - set(order))
    rated = overall[overall["metric"].notna()]
    metrics = sorted(str(m) for m in rated["metric"].unique())
    higher = {metric: higher_is_better(metric, declared) for metric in metrics}
    cells: dict[tuple[str, str], Cell] = {}
    for row in rated.itertuples(index=False):
        pairs = getattr(row, "n_pairs", row.n)  # summaries written before n_pairs count each value as a pair
        n_pairs = int(pairs) if np.isfinite(pairs) else 0
        cells[(row.label, str(row.metric))] = Cell(
            float(row.mean),
            float(row.ci_low),
            float(row.ci_high),
            int(row.n),
            is_random_weights(row.weights),
            n_pairs=n_pairs,
        )
    for metric in metrics:
        # a ★ needs an interval behind it: only cells over at least MIN_CLUSTERS pairs compete
        column = {
            label: cell
            for (label, m), cell in cells.items()
            if m == metric and np.isfinite(cell.mean) and cell.n_pairs >= MIN_CLUSTERS
        }
        if len(column) < 2:
            continue  # one method: nothing to be best against
        best = max if higher[metric] else min
        target = best(cell.mean for cell in column.values())
        for label, cell in column.items():
            if cell.mean == target:
                cells[(label, metric)] = Cell(
                    cell.mean, cell.ci_low, cell.ci_high, cell.n, cell.tiny_random, True, cell.n_pairs
                )
    failed = overall.drop_duplicates("label").set_index("label")["n_failed"] if "n_failed" in overall else {}
    n_failed = {label: int(failed.get(label, 0) or 0) for label in methods}
    return Headline(methods, metrics, higher, cells, n_failed)


def to_markdown(table: Headline) -> str:
    """The headline as Markdown: best cells in bold with ★, the † footnote once above the table."""
    lines = [
        "| method | " + " | ".join(table.header(m) for m in table.metrics) + " | n failed |",
        "|---|" + "---|" * len(table.metrics) + "---|",
    ]
    for label in table.methods:
        cells = []
        for metric in table.metrics:
            cell = table.cells.get((label, metric))
            text = "" if cell is None else cell.text()
            cells.append(f"**{text} {BEST_MARK}**" if cell is not None and cell.best else text)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {table.n_failed.get(label, 0)} |")
    note = f"{TINY_FOOTNOTE}\n\n" if table.tiny_random else ""
    legend = (
        f"Mean [95% CI] over all categories; {INTERVAL_NOTE}; ↑ higher is better, ↓ lower is better; "
        f"{BEST_MARK} best of its column. A swept setting or an ablation is its own row (the variant after "
        f"method/preset).\n\n"
    )
    return note + legend + "\n".join(lines) + "\n"


# At most this many metric columns per table of the HTML headline: with the method column and "n failed" a table
# stays inside a 1200 px page (a cell is a mean over an interval, about 110 px); more metrics wrap into further
# tables with the method column repeated.
HTML_METRICS_PER_TABLE = 6


def _header_html(text: str) -> str:
    """A column header that may break after its underscores ("oracle_<wbr>preservation ↑")."""
    return html.escape(text).replace("_", "_<wbr>")


def to_html(table: Headline, per_table: int = HTML_METRICS_PER_TABLE) -> str:
    """The headline as HTML tables (class "results headline"), at most ``per_table`` metrics each: best cells
    bold with ★, † on tiny-random cells, the interval under the mean; "n failed" ends the first table."""
    chunks = [table.metrics[i : i + per_table] for i in range(0, len(table.metrics), per_table)] or [[]]
    return "".join(_html_chunk(table, metrics, with_failed=index == 0) for index, metrics in enumerate(chunks))


def _html_chunk(table: Headline, metrics: Sequence[str], with_failed: bool) -> str:
    head = "".join(f"<th>{_header_html(table.header(m))}</th>" for m in metrics)
    rows = []
    for label in table.methods:
        cells = []
        for metric in metrics:
            cell = table.cells.get((label, metric))
            if cell is None:
                cells.append("<td></td>")
                continue
            mean = html.escape(format_number(cell.mean) + (TINY_MARK if cell.tiny_random else ""))
            ci = (
                f"<br><small>[{html.escape(format_number(cell.ci_low))}, {html.escape(format_number(cell.ci_high))}]"
                f"</small>"
                if np.isfinite(cell.ci_low)
                else f"<br><small>n={cell.n_pairs} pairs</small>"
            )
            cells.append(
                f'<td class="best"><strong>{mean} {BEST_MARK}</strong>{ci}</td>'
                if cell.best
                else f"<td>{mean}{ci}</td>"
            )
        failed = f"<td>{table.n_failed.get(label, 0)}</td>" if with_failed else ""
        rows.append(f"<tr><td>{html.escape(label)}</td>{''.join(cells)}{failed}</tr>")
    failed_head = "<th>n failed</th>" if with_failed else ""
    return (
        f'<div class="headline"><table class="results headline"><thead><tr><th>method</th>{head}{failed_head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
