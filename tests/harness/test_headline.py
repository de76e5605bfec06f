"""The report's headline: method x metric over all categories at the top of index.html and summary.md."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from test_report import fake_run  # noqa: F401 - the fixture

from harness import store
from harness.analyse.aggregate import TINY_RANDOM_NOTE
from harness.analyse.report import write_report

BEST = "★"


def raw_means(run_dir: Path) -> pd.DataFrame:
    """Mean of each method's values per metric over every category, straight from the rows written."""
    rows = pd.concat([pd.read_parquet(path) for path in sorted((run_dir / store.RESULTS_DIR).glob("*.parquet"))])
    ok = rows[rows["status"].eq("ok")]
    return ok.groupby(["method", "metric"])["value"].mean().unstack()


def test_headline_heads_the_report_with_direction_best_and_failures(fake_run: Path) -> None:  # noqa: F811
    index = write_report(fake_run)
    page = index.read_text()
    summary = (index.parent / "summary.md").read_text()

    # Above every per-category table, in both outputs.
    assert page.index('id="headline"') < page.index('id="tables"') < page.index('id="provenance"')
    assert summary.index("| method |") < summary.index("## Per category")
    header = next(line for line in summary.splitlines() if line.startswith("| method |"))
    assert "clip_t ↑" in header and "lpips_outside ↓" in header and header.endswith("| n failed |")

    means = raw_means(fake_run)
    lines = summary.splitlines()
    body = lines[lines.index(header) + 2 :]
    body = body[: next(i for i, line in enumerate(body) if not line.startswith("| "))]
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in body}
    columns = [c.strip() for c in header.split("|")[2:-1]]
    labels = {"clic": "clic/paper", "custom_diffusion": "custom_diffusion/default"}
    for metric, higher in (("clip_t", True), ("lpips_outside", False)):
        column = columns.index(f"{metric} {'↑' if higher else '↓'}")
        best = means[metric].idxmax() if higher else means[metric].idxmin()
        for method, label in labels.items():
            cell = table[label][column]
            assert cell.lstrip("*").startswith(f"{means.loc[method, metric]:.4g} ["), (cell, means.loc[method, metric])
            assert (BEST in cell) == (method == best), (metric, method, cell)
    assert table["custom_diffusion/default"][-1] == "1" and table["clic/paper"][-1] == "0"

    # The tiny-random warning once per page, and a dagger on every cell made with random weights.
    assert page.count(TINY_RANDOM_NOTE) == 1
    assert summary.count(TINY_RANDOM_NOTE) == 1
    headline_html = page[page.index('class="results headline"') :]
    headline_html = headline_html[: headline_html.index("</table>")]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", headline_html)
    numbers = [cell for cell in cells if "[" in cell]  # mean, dagger, then the CI
    assert numbers and all("†" in cell for cell in numbers)
    # One best per metric column, except mask_intersection: 100 in every row, a tie, so both methods are marked.
    assert len(re.findall(r'class="best"', headline_html)) == len(columns) - 1 + 1
    column = columns.index("mask_intersection ↑")
    assert all(BEST in table[label][column] for label in table)
