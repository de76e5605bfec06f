"""issue 25: the report's bounded image sample and the full per-pair table (Parquet + sortable HTML)."""

from __future__ import annotations

import json
import re

import pandas as pd

from harness.analyse import pair_table


def _results(pairs: int) -> pd.DataFrame:
    rows = []
    for index in range(pairs):
        for method, offset in (("cut_paste", 0.0), ("clic", 0.5)):
            base = {
                "job_id": f"{method}-{index}",
                "pair_id": f"p{index:04d}",
                "category": "c",
                "method": method,
                "preset": "default",
                "task": "transfer",
                "seed": 0,
                "object_word": "chair",
                "t_start": 4,
                "eta": float("nan"),
                "status": "ok",
            }
            # psnr grows with the index (higher is better); lpips too (lower is better)
            rows.append({**base, "metric": "psnr", "value": index + offset, "higher_is_better": True})
            rows.append({**base, "metric": "lpips", "value": index / 10 + offset, "higher_is_better": False})
    return pd.DataFrame(rows)


def test_small_runs_show_every_pair():
    shown, note = pair_table.grid_sample(_results(5), {"psnr": True, "lpips": False})
    assert shown == {f"p{i:04d}" for i in range(5)} and "Every pair" in note


def test_the_sample_is_best_median_worst_per_method_and_metric_plus_seeded_random_few():
    results = _results(1000)
    declared = {"psnr": True, "lpips": False}
    shown, note = pair_table.grid_sample(results, declared, seed=3)
    # values rise with the index for both metrics: best/worst are the ends (p0999/p0000 for psnr, reversed for
    # lpips); the median is element 500 of each sorted order: p0499 sorted descending (psnr), p0500 ascending
    assert {"p0000", "p0999", "p0499", "p0500"} <= shown
    assert len(shown) == 4 + pair_table.RANDOM_PAIRS
    assert shown == pair_table.grid_sample(results, declared, seed=3)[0]  # seeded: the same sample again
    assert "1000 pairs" in note and "random" in note


def test_pair_table_has_one_row_per_job_and_one_column_per_metric(tmp_path):
    results = _results(30)
    parquet, page = pair_table.write_pair_table(results, tmp_path)
    table = pd.read_parquet(parquet)
    assert len(table) == 60 and {"psnr", "lpips", "pair_id", "label", "job_id"} <= set(table.columns)
    row = table[table["job_id"] == "clic-7"].iloc[0]
    assert row["psnr"] == 7.5 and abs(row["lpips"] - 1.2) < 1e-12
    embedded = re.search(r'<script id="data" type="application/json">(.*?)</script>', page.read_text(), re.S)
    data = json.loads(embedded.group(1))
    assert len(data["rows"]) == 60 and "psnr" in data["columns"]


def test_the_html_rows_are_the_parquet_rows_with_non_finite_values_as_null(tmp_path):
    results = _results(3)
    results.loc[(results["job_id"] == "clic-1") & (results["metric"] == "psnr"), "value"] = float("inf")
    results.loc[results["job_id"] == "cut_paste-0", "object_word"] = "a </script> <b>"  # would end the script
    parquet, page = pair_table.write_pair_table(results, tmp_path)
    embedded = re.search(r'<script id="data" type="application/json">(.*?)</script>', page.read_text(), re.S)
    data = json.loads(embedded.group(1))
    table = pd.read_parquet(parquet).drop(columns=["job_id"])
    assert data["columns"] == list(table.columns)
    psnr, word = data["columns"].index("psnr"), data["columns"].index("object_word")
    by_pair_label = {(row[0], row[2]): row for row in data["rows"]}
    assert by_pair_label[("p0001", "clic/default")][psnr] is None  # the infinite value: no number to show
    assert by_pair_label[("p0002", "clic/default")][psnr] == 2.5
    assert by_pair_label[("p0000", "cut_paste/default")][word] == "a </script> <b>"
    # every other cell is the Parquet's, rounded to 5 decimals
    for record in table.itertuples(index=False):
        row = by_pair_label[(record.pair_id, record.label)]
        assert row[data["columns"].index("seed")] == record.seed and row[data["columns"].index("eta")] is None
