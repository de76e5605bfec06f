"""Tables of a run's results: means with bootstrap CIs, paired differences, and the regression gate.

Everything reads the tidy results frame (one row per job × metric). Values stay on their raw scale (a
cosine stays a cosine, never ×100); the `metric_scale` column says which scale that is. Failed jobs have
no metric values: they are counted (`n_failed`), never averaged. Every table carries a `weights` column
naming the diffusion weights and the metric weights that made its numbers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analyse.bootstrap import MIN_CLUSTERS, bootstrap_ci
from harness.analyse.table_output import (  # noqa: F401
    TABLE_CSS,
    TINY_RANDOM_NOTE,
    format_number,
    table_note,
    to_html_fragment,
    to_markdown,
    uses_tiny_random,
    write_tables,
)
from harness.groups import ALL_CATEGORIES  # noqa: F401 - re-exported: the report, figures and headline read it here
from harness.store import read_plan_results

POOLED_IOU = "mask_iou_pooled"
INTERVAL_THREADS = 8  # a table's intervals in parallel (each holds ~100 MB of draws at a time)


INTERVAL_NOTE = (
    f"95% CI: percentile bootstrap over pairs (clusters), with seeds resampled inside each drawn pair; "
    f"no interval (and no ★) below {MIN_CLUSTERS} pairs"
)


def directions(*frames: pd.DataFrame) -> dict[str, bool]:
    """Value name -> whether higher is better, as each metric declared it (the rows' `higher_is_better`
    column; a value without a declaration, e.g. in a run made before the column existed, counts as higher)."""
    found: dict[str, bool] = {}
    for df in frames:
        if df.empty or "higher_is_better" not in df.columns:
            continue
        declared = df.dropna(subset=["metric", "higher_is_better"]).drop_duplicates("metric")
        for metric, higher in zip(declared["metric"], declared["higher_is_better"]):
            found.setdefault(str(metric), bool(higher))
    return found


def higher_is_better(metric: str, declared: Mapping[str, bool]) -> bool:
    return declared.get(metric, True)


# ---------------------------------------------------------------------------------------------- reading


def read_run_results(run_dir: str | Path) -> pd.DataFrame:
    """The result rows of a run folder's current plan (an empty frame with the schema's columns when it has
    none); rows of earlier plans of the folder are left out (:func:`harness.store.read_plan_results`)."""
    return read_plan_results(run_dir)[0]


def interval(
    values: np.ndarray, clusters: np.ndarray | pd.Series, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """The CI of one table cell: pairs resampled as clusters with their seeds nested, or none (nan) below
    ``MIN_CLUSTERS`` pairs."""
    # the units as codes in the text order of their names (hashed, not a Python set over every row)
    codes, units = pd.factorize(pd.Series(np.asarray(clusters, dtype=object)).astype(str), sort=True)
    if len(units) < MIN_CLUSTERS:
        return (float("nan"), float("nan"))
    return bootstrap_ci(values, weights=weights, clusters=codes, nested=True)


def _clusters(df: pd.DataFrame) -> pd.Series:
    """Each row's resampling unit: its pair (a concepts group, which spans pairs, is a unit of its own)."""
    pair = _column(df, "pair_id")
    return pair.where(pair.notna(), _column(df, "job_id")).astype(str)


# ---------------------------------------------------------------------------------------------- helpers


def weights_description(df: pd.DataFrame) -> pd.Series:
    """Per row: "<diffusion weights_label> + <metric_weights>" (e.g. "tiny-random + tiny-random")."""
    diffusion = _column(df, "weights_label").fillna("?").astype(str)
    metric = _column(df, "metric_weights").fillna("-").astype(str)
    return diffusion + " + " + metric


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def _ok_values(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that carry a metric value: status ok, a metric name and a finite value."""
    if df.empty or "metric" not in df.columns:
        return df.iloc[0:0]
    status_ok = _column(df, "status").fillna("ok").eq("ok")
    value = pd.to_numeric(df["value"], errors="coerce")
    keep = status_ok & df["metric"].notna() & np.isfinite(value)
    return df.loc[keep].assign(value=value[keep].astype(float))


def _joined_unique(values: pd.Series) -> str:
    return ", ".join(sorted(values.dropna().astype(str).unique()))


def _with_all_category(df: pd.DataFrame) -> pd.DataFrame:
    if "category" not in df.columns:
        return df
    # Rows already pooled over categories (a concepts group spans them all) are counted once.
    per_category = df[df["category"].ne(ALL_CATEGORIES)]
    return pd.concat([df, per_category.assign(category=ALL_CATEGORIES)], ignore_index=True)


# ---------------------------------------------------------------------------------------------- tables


SUMMARY_COLUMNS = (
    *("category", "job_id", "pair_id", "status", "metric", "value"),
    *("metric_scale", "weights_label", "metric_weights"),
)


def summary_table(df: pd.DataFrame, by: Sequence[str] = ("method", "category", "metric")) -> pd.DataFrame:
    """n (values: pairs × seeds), n_pairs, mean and 95% bootstrap CI per group (pairs resampled with their seeds
    nested; no CI below ``MIN_CLUSTERS`` pairs), plus an "all" category and the pooled mask IoU.

    The pooled IoU (Σ mask_intersection / Σ mask_union over a group's jobs) is its own metric row
    "mask_iou_pooled": large masks weigh more, unlike the mean of per-job IoUs. `n_failed` counts the
    group's failed jobs (they have no metric, so it is counted over the non-metric keys).
    """
    by = list(by)
    # only the columns the table reads: copying and grouping the other ~40 of 800k rows was most of its time
    df = df[[name for name in df.columns if name in {*by, *SUMMARY_COLUMNS}]]
    if "category" in by:
        df = _with_all_category(df)
    values = _ok_values(df)
    values = values.assign(weights=weights_description(values))
    values = values.assign(cluster=_clusters(values))
    groups = list(values.groupby(by, dropna=False, sort=True))
    intervals = _group_intervals([group for _, group in groups])
    rows = []
    for (key, group), (low, high) in zip(groups, intervals):
        data = group["value"].to_numpy()
        rows.append(
            {
                **dict(zip(by, key)),
                "n": data.size,
                "n_pairs": group["cluster"].nunique(),
                "mean": data.mean(),
                "ci_low": low,
                "ci_high": high,
                "metric_scale": _joined_unique(_column(group, "metric_scale")),
                "weights": _joined_unique(group["weights"]),
            }
        )
    rows.extend(_pooled_iou_rows(values, by))
    table = pd.DataFrame(rows, columns=[*by, "n", "n_pairs", "mean", "ci_low", "ci_high", "metric_scale", "weights"])
    table = _attach_failures(table, df, [k for k in by if k != "metric"])
    return table.sort_values(by, kind="stable").reset_index(drop=True)


def _group_intervals(groups: list[pd.DataFrame]) -> list[tuple[float, float]]:
    """:func:`interval` of each group's values over its clusters, the groups in parallel threads (numpy releases
    the GIL; each interval draws from its own seeded generator, so the numbers do not depend on the threads)."""
    keys, jobs = [], {}
    for group in groups:
        data = group["value"].to_numpy()
        # e.g. the "all" category of a run with one category: the same draws would give the same interval
        units = pd.util.hash_pandas_object(group["cluster"], index=False).to_numpy()
        same = hashlib.sha256(data.tobytes() + units.tobytes()).hexdigest()
        keys.append(same)
        jobs.setdefault(same, (data, group["cluster"].to_numpy()))
    if len(jobs) < 2:
        found = {key: interval(*job) for key, job in jobs.items()}
    else:
        with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1, INTERVAL_THREADS)) as pool:
            found = dict(zip(jobs, pool.map(lambda job: interval(*job), jobs.values())))
    return [found[key] for key in keys]


def _pooled_iou_rows(values: pd.DataFrame, by: list[str]) -> list[dict]:
    parts = values[values["metric"].isin(["mask_intersection", "mask_union"])]
    if parts.empty or "metric" not in by:
        return []
    group_keys = [k for k in by if k != "metric"]
    parts = parts.assign(group=_group_labels(parts, group_keys))
    per_job = parts.pivot_table(index=["group", "job_id"], columns="metric", values="value", aggfunc="mean")
    if not {"mask_intersection", "mask_union"} <= set(per_job.columns):
        return []
    per_job = per_job.dropna(subset=["mask_intersection", "mask_union"])
    rows = []
    for group_label, group in per_job.groupby(level="group", sort=True):
        first = parts[parts["group"].eq(group_label)]
        inter, union = group["mask_intersection"].to_numpy(), group["mask_union"].to_numpy()
        job_clusters = first.drop_duplicates("job_id").set_index("job_id")["cluster"]
        clusters = job_clusters.reindex(group.index.get_level_values("job_id")).to_numpy()
        low, high = interval(inter, clusters, weights=union)
        rows.append(
            {
                **{k: first[k].iloc[0] for k in group_keys},
                "metric": POOLED_IOU,
                "n": inter.size,
                "n_pairs": len(set(map(str, clusters))),
                "mean": inter.sum() / union.sum() if union.sum() > 0 else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "metric_scale": "ratio 0-1",
                "weights": _joined_unique(first["weights"]),
            }
        )
    return rows


def _group_labels(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One string label per row for the combination of `keys` (nulls included), for simple grouping."""
    if not keys:
        return pd.Series("", index=df.index)
    return df[keys].astype(str).agg("\x1f".join, axis=1)


def _attach_failures(table: pd.DataFrame, df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Add n_failed: distinct failed jobs per group of `keys`."""
    if df.empty or "status" not in df.columns:
        return table.assign(n_failed=0)
    failed = df[df["status"].eq("failed")].drop_duplicates([*keys, "job_id"])
    if not keys:
        return table.assign(n_failed=failed["job_id"].nunique())
    counts = failed.groupby(keys, dropna=False).size().rename("n_failed").reset_index()
    # Groups whose jobs all failed still get a row, so the failure is visible in the table.
    merged = table.merge(counts, on=keys, how="outer")
    merged["n_failed"] = merged["n_failed"].fillna(0).astype(int)
    merged["n"] = merged["n"].fillna(0).astype(int)
    return merged


def method_labels(df: pd.DataFrame, variants: bool = False) -> pd.Series:
    """Each row's :func:`harness.plan.identity.method_label` ("clic/paper", with ``variants`` "clic/paper no_att"),
    worked out once per distinct (method, preset, variant): a 100k-job run has 800k rows and a few labels."""
    from harness.plan.identity import method_label

    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    parts = [df["method"], df["preset"]] + ([_column(df, "variant").fillna("")] if variants else [])
    keys = pd.DataFrame({str(i): part.to_numpy(dtype=object) for i, part in enumerate(parts)}, index=df.index)
    codes = keys.groupby(list(keys.columns), dropna=False, sort=False).ngroup().to_numpy()
    firsts = keys.drop_duplicates()  # the groups in order of first appearance, as ngroup numbers them
    labels = np.array([method_label(*row) for row in firsts.itertuples(index=False)], dtype=object)
    return pd.Series(labels[codes], index=df.index)
