"""A report that stays small at 100k jobs: image grids for a bounded, explained sample of pairs, and every
pair's values as a Parquet table and a sortable HTML page instead of a thumbnail set per pair.

The sample (:func:`grid_sample`): for each method (label) and each metric value, the pairs with the best, the
median and the worst value of that method (by the metric's declared direction), plus a seeded random few; a
run with at most ``ALL_PAIRS_UP_TO`` pairs shows every pair. The full table (:func:`write_pair_table`): one
row per job (pair, method, task, seed, sweep point) and one column per metric value, as
``tables/pairs.parquet`` and ``tables/pairs.html`` (sorted by clicking a column head, shown a page at a time;
the rows are embedded as JSON, so the page needs no server).
"""

from __future__ import annotations

import html
import json
import random
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .aggregate import _ok_values, higher_is_better, method_labels

ALL_PAIRS_UP_TO = 24  # a run with this many pairs or fewer shows them all
RANDOM_PAIRS = 6  # the seeded random few shown beside the best/median/worst
MAX_SAMPLE = 120  # at most this many pairs in the grids, whatever the number of methods and metrics
_LABEL_VALUE_COLUMNS = ("method", "preset", "status", "metric", "value")  # what a label and a value are read from
ID_COLUMNS = ("pair_id", "category", "label", "task", "seed", "object_word", "t_start", "eta", "job_id")


def grid_sample(results: pd.DataFrame, declared: Mapping[str, bool], seed: int = 0) -> tuple[set[str], str]:
    """(pair ids whose images the report shows, one sentence saying which and why)."""
    pairs = sorted({str(p) for p in results.get("pair_id", pd.Series(dtype=object)).dropna()})
    if len(pairs) <= ALL_PAIRS_UP_TO:
        return set(pairs), f"Every pair of the run ({len(pairs)})."
    values = _ok_values(results[[c for c in results.columns if c in {"pair_id", *_LABEL_VALUE_COLUMNS}]])
    values = values[values["pair_id"].notna()]
    chosen: dict[str, None] = {}
    if not values.empty:
        values = values.assign(label=method_labels(values))
        per_pair = values.groupby(["label", "metric", "pair_id"], sort=True)["value"].mean().reset_index()
        for (_label, metric), group in per_pair.groupby(["label", "metric"], sort=True):
            ordered = group.sort_values(["value", "pair_id"], ascending=[not higher_is_better(metric, declared), True])
            ids = ordered["pair_id"].astype(str).tolist()
            for pick in (ids[0], ids[len(ids) // 2], ids[-1]):  # best, median, worst
                chosen.setdefault(pick)
    sampled = list(chosen)[: MAX_SAMPLE - RANDOM_PAIRS]
    rest = [pair for pair in pairs if pair not in chosen]
    extra = random.Random(seed).sample(rest, min(RANDOM_PAIRS, len(rest)))
    note = (
        f"A sample of {len(sampled) + len(extra)} of the run's {len(pairs)} pairs: for each method and metric "
        f"value, the pairs with the best, median and worst value (by the metric's direction"
        f"{'; the first ' + str(len(sampled)) + ' of them' if len(chosen) > len(sampled) else ''}), and "
        f"{len(extra)} drawn at random (seed {seed}). Every pair's values: tables/pairs.html and "
        f"tables/pairs.parquet."
    )
    return set(sampled) | set(extra), note


def pair_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per job with a value, one column per metric value (mean over the job's rows of that value)."""
    needed = {*ID_COLUMNS, *_LABEL_VALUE_COLUMNS}  # not the other ~30 columns of every row
    values = _ok_values(results[[column for column in results.columns if column in needed]])
    values = values[values["pair_id"].notna()] if "pair_id" in values.columns else values
    if values.empty:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    values = values.assign(label=method_labels(values))
    keys = [column for column in ID_COLUMNS if column in values.columns]
    # null keys (eta of a method without one) kept as groups of their own (dropna=False), in their own types
    table = (
        values.groupby([*keys, "metric"], dropna=False, sort=True, observed=True)["value"]
        .mean()
        .unstack("metric")
        .reset_index()
    )
    table.columns = [str(column) for column in table.columns]
    return table


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:13px sans-serif;margin:1em}} table{{border-collapse:collapse}} th,td{{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}}
th{{cursor:pointer;background:#f3f3f3;position:sticky;top:0}} td:nth-child(-n+4){{text-align:left}} nav button{{margin:0 2px}}</style></head>
<body><h1>{title}</h1><p>{rows} rows: one per job, one column per metric value. Click a column head to sort (again:
descending); the same rows as <a href="pairs.parquet">pairs.parquet</a>.</p>
<nav><button id="prev">&larr;</button><span id="where"></span><button id="next">&rarr;</button>
filter <input id="filter" placeholder="text in any cell"></nav>
<table><thead><tr id="heads"></tr></thead><tbody id="body"></tbody></table>
<script id="data" type="application/json">{data}</script>
<script>
const DATA = JSON.parse(document.getElementById("data").textContent), PAGE = 500;
let rows = DATA.rows, page = 0, key = -1, down = false;
const heads = document.getElementById("heads");
DATA.columns.forEach((name, i) => {{ const th = document.createElement("th"); th.textContent = name;
  th.onclick = () => {{ down = key === i ? !down : false; key = i; sort(); show(); }}; heads.appendChild(th); }});
function sort() {{ rows.sort((a, b) => {{ const x = a[key], y = b[key];
  const c = (x === null) - (y === null) || (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y)));
  return down ? -c : c; }}); }}
function show() {{ const last = Math.max(0, Math.ceil(rows.length / PAGE) - 1); page = Math.min(Math.max(page, 0), last);
  document.getElementById("where").textContent = ` rows ${{page * PAGE + 1}}-${{Math.min(rows.length, (page + 1) * PAGE)}} of ${{rows.length}} `;
  document.getElementById("body").innerHTML = rows.slice(page * PAGE, (page + 1) * PAGE).map(r => "<tr>" + r.map(v =>
    "<td>" + (v === null ? "" : typeof v === "number" ? (Number.isInteger(v) ? v : v.toPrecision(4)) : String(v).replace(/&/g, "&amp;").replace(/</g, "&lt;")) + "</td>").join("") + "</tr>").join(""); }}
document.getElementById("prev").onclick = () => {{ page--; show(); }};
document.getElementById("next").onclick = () => {{ page++; show(); }};
document.getElementById("filter").oninput = (e) => {{ const t = e.target.value.toLowerCase(); page = 0;
  rows = t ? DATA.rows.filter(r => r.some(v => v !== null && String(v).toLowerCase().includes(t))) : DATA.rows; if (key >= 0) sort(); show(); }};
show();
</script></body></html>
"""


def write_pair_table(results: pd.DataFrame, folder: Path, title: str = "Every pair") -> tuple[Path, Path]:
    """Write ``pairs.parquet`` and the sortable ``pairs.html`` of :func:`pair_table` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pair_table(results)
    parquet = folder / "pairs.parquet"
    table.to_parquet(parquet, index=False)
    value_columns = [c for c in table.columns if c not in ID_COLUMNS]
    shown = table.drop(columns=["job_id"], errors="ignore")
    rounded = shown.assign(**{c: shown[c].round(5) for c in value_columns})
    # the rows as JSON arrays in one vectorised call (non-finite values become null)
    rows = rounded.to_json(orient="values", double_precision=10)
    data = f'{{"columns":{json.dumps([str(c) for c in shown.columns])},"rows":{rows}}}'
    page = folder / "pairs.html"
    page.write_text(
        _PAGE.format(title=html.escape(title), rows=len(rounded), data=data.replace("</", "<\\/")), encoding="utf-8"
    )
    return parquet, page
