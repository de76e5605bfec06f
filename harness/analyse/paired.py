"""Paired comparisons: method against reference within a run (:func:`paired_differences`, the report's table)
and run B against run A (:func:`compare_runs`, the regression gate of `clic-bench compare`). The unit is the pair:
differences are taken per (pair, seed), intervals resample pairs with their seeds nested, and the tests run on
per-pair mean differences (seeds of one pair are not independent draws)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from harness.analyse.aggregate import (
    _column,
    _joined_unique,
    _ok_values,
    directions,
    higher_is_better,
    interval,
    method_labels,
    weights_description,
)
from harness.analyse.bootstrap import MIN_CLUSTERS, holm

# Below this many pairs the Wilcoxon signed-rank test cannot reach p < 0.05 at all (its smallest
# two-sided p with n = 5 is 0.0625), so the paired t-test is used instead.
MIN_PAIRS_FOR_WILCOXON = 6


# The fields that identify one job's output across two runs of a suite, apart from the code and weights that
# produced it: the same pair, task, seed and object under the same method label (method, preset and variant)
# at the same point of the suite's sweep.
JOB_IDENTITY = ("pair_id", "task", "seed", "object_word", "label", "sweep")
# What a paired comparison of two methods within a run pairs on (their labels differ).
PAIRING = ("pair_id", "seed", "task", "object_word")


def paired_test(differences: Sequence[float] | np.ndarray) -> tuple[float, str]:
    """Two-sided p-value of "mean difference is zero" and the name of the test used.

    Wilcoxon signed-rank with n ≥ 6 and some non-zero difference; otherwise the paired t-test (a one-sample
    t-test of the differences). All-zero differences give p = 1: no evidence of any change.
    """
    from scipy import stats  # here: ~2 s to import, and a run of one method compares nothing

    diffs = np.asarray(differences, dtype=float)
    if diffs.size < 2:
        return (float("nan"), "none")
    if np.all(diffs == 0):
        return (1.0, "t-test")
    if diffs.size >= MIN_PAIRS_FOR_WILCOXON:
        return (float(stats.wilcoxon(diffs).pvalue), "wilcoxon")
    p_value = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return (p_value if np.isfinite(p_value) else 1.0, "t-test")


def _sweep_key(df: pd.DataFrame) -> pd.Series:
    """Each row's point of the suite's sweep ("" where the method reads no such settings: it pairs with any)."""
    return _column(df, "sweep").fillna("").astype(str)


def _per_pair_differences(group: pd.DataFrame, other: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """(differences per (pair, seed), their pairs): the unit of the intervals and tests is the pair."""
    return (group[other] - group[reference]).to_numpy(), group["pair_id"].astype(str).to_numpy()


def _paired_statistics(diffs: np.ndarray, pairs: np.ndarray) -> dict[str, object]:
    """Mean difference, its cluster CI (pairs, seeds nested) and the paired test on per-pair mean differences
    (seeds of one pair are not independent draws)."""
    low, high = interval(diffs, pairs)
    per_pair = pd.Series(diffs).groupby(pairs).mean().to_numpy()
    p_value, test = paired_test(per_pair) if per_pair.size >= MIN_CLUSTERS else (float("nan"), "none")
    return {
        "n": diffs.size,
        "n_pairs": per_pair.size,
        "mean_difference": diffs.mean(),
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "test": test,
    }


def _per_key_values(values: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean value and joined distinct weights per group of ``keys``. A group's rows nearly always share one
    weights description: it is taken as it is (vectorised), and only when some group has several are they
    joined group by group (a Python call per group took minutes at 100k pairs)."""
    grouped = values.groupby(keys, dropna=False)
    per_key = grouped.agg(
        value=("value", "mean"), weights=("weights", "first"), n_weights=("weights", "nunique")
    ).reset_index()
    if per_key["n_weights"].gt(1).any():
        return grouped.agg(value=("value", "mean"), weights=("weights", _joined_unique)).reset_index()
    weights = per_key["weights"].astype(object)
    per_key["weights"] = [str(w) if n else "" for w, n in zip(weights, per_key["n_weights"])]
    return per_key.drop(columns="n_weights")


PAIRED_COLUMNS = (
    *("method", "preset", "reference", "reference_preset", "metric", "n", "n_pairs", "mean_difference"),
    *("ci_low", "ci_high", "p_value", "p_holm", "test", "higher_is_better", "weights"),
)


def paired_differences(df: pd.DataFrame, reference: str = "clic") -> pd.DataFrame:
    """Mean paired difference (other − reference) per other method label (preset and variant) and metric.

    ``reference`` is a method (every label of every other method against each of its labels, each its own
    ``reference_preset``) or one method label as the rows carry it, e.g. "clic/paper no_att" (every other label
    of the run, variants of the same method included, against that label's rows). A reference that is neither
    pairs nothing (:func:`unknown_reference` says why). Rows pair on (pair, seed, task, object word) at the same
    point of the suite's sweep (a method that reads no such settings, e.g. cut-and-paste, pairs with every
    point). The test runs on per-pair mean differences; ``p_holm`` is Holm-corrected across the metrics of each
    comparison (one method label against one reference label).
    """
    values = _ok_values(df)
    if values.empty:
        return pd.DataFrame(columns=list(PAIRED_COLUMNS))
    values = values.assign(sweep_key=_sweep_key(values), weights=weights_description(values))
    reference_method, reference_preset = reference, None
    if not values["method"].eq(reference).any() and _labels(values).eq(reference).any():
        # a label: each side is (method, the label's preset part), so that variants of one method are told apart
        values = values.assign(preset=_label_presets(values))
        reference_method = str(values.loc[_labels(values).eq(reference), "method"].iloc[0])
        reference_preset = _label_preset(reference_method, reference)
    paired = _paired_with_reference(values, reference_method, reference_preset)
    declared = directions(values)
    rows = []
    for (method, preset, ref_preset, metric), group in paired.groupby(
        ["method", "preset", "reference_preset", "metric"], dropna=False, sort=True
    ):
        diffs, pairs = _per_pair_differences(group, "value", "reference_value")
        rows.append(
            {
                "method": method,
                "preset": preset,
                "reference": reference_method,
                "reference_preset": ref_preset,
                "metric": metric,
                **_paired_statistics(diffs, pairs),
                "higher_is_better": higher_is_better(str(metric), declared),
                "weights": _joined_unique(pd.concat([group["weights"], group["reference_weights"]])),
            }
        )
    table = pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
    if not table.empty:  # family: the metrics of one comparison
        for _, index in table.groupby(["method", "preset", "reference_preset"], dropna=False).groups.items():
            table.loc[index, "p_holm"] = holm(table.loc[index, "p_value"].to_numpy(float))
    return table


def unknown_reference(df: pd.DataFrame, reference: str) -> str | None:
    """None when ``reference`` is a method or a method label of the rows of ``df``; else one line naming them."""
    if df.empty or "method" not in df.columns:
        return None
    labels = _labels(df)
    if df["method"].eq(reference).any() or labels.eq(reference).any():
        return None
    methods = ", ".join(sorted(df["method"].dropna().astype(str).unique()))
    named = ", ".join(f'"{label}"' for label in sorted(labels.unique()))
    return f"{reference!r} is neither a method nor a method label of the run (methods: {methods}; labels: {named})"


def _label_preset(method: str, label: str) -> str:
    """The part of a method label after its method: "paper no_att" of "clic/paper no_att" ("" for a bare method;
    the variant alone for a method without presets, as :func:`harness.analyse.report_tables.with_variants`)."""
    for head in (f"{method}/", f"{method} "):
        if label.startswith(head):
            return label[len(head) :]
    return ""


def _label_presets(values: pd.DataFrame) -> list[str]:
    """Each row's :func:`_label_preset`, worked out once per distinct (method, label)."""
    pairs = list(zip(values["method"].astype(str), _labels(values)))
    presets = {pair: _label_preset(*pair) for pair in set(pairs)}
    return [presets[pair] for pair in pairs]


def _paired_with_reference(values: pd.DataFrame, method: str, preset: str | None = None) -> pd.DataFrame:
    """Each other label's mean value per (pair, seed, task, object, metric) beside the reference's, where both
    ran at the same point of the sweep (or one of them reads no sweep settings). The reference is every label of
    ``method``, or only its ``preset`` when one is given."""
    keys = [*PAIRING, "metric"]
    per_key = _per_key_values(values, [*keys, "sweep_key", "method", "preset"])
    renamed = {
        "value": "reference_value",
        "preset": "reference_preset",
        "weights": "reference_weights",
        "sweep_key": "reference_sweep",
    }
    is_reference = per_key["method"].eq(method) & (per_key["preset"].eq(preset) if preset is not None else True)
    ref = per_key[is_reference].rename(columns=renamed).drop(columns="method")
    paired = per_key[~is_reference].merge(ref, on=keys, how="inner")
    same_point = (
        paired["sweep_key"].eq(paired["reference_sweep"])
        | paired["sweep_key"].eq("")
        | paired["reference_sweep"].eq("")
    )
    return paired[same_point]


COMPARE_COLUMNS = (
    *("metric", "label", "method", "preset", "n", "n_pairs", "mean_a", "mean_b", "delta", "ci_low", "ci_high"),
    *("p_value", "test", "higher_is_better", "drop", "verdict", "n_failed_a", "n_failed_b", "weights"),
)


def compare_runs(
    df_a: pd.DataFrame,
    df_b: pd.DataFrame,
    metrics: Iterable[str] | None = None,
    max_drop: float = 0.0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired deltas B − A per (method label, metric), jobs matched by :data:`JOB_IDENTITY` (the same pair, task,
    seed, object, label and sweep point; settings and code may differ: that is what is compared).

    `drop` is the mean change in the worse direction (positive = worse). The verdict is "fail" when the
    drop exceeds `max_drop` and the paired test (on per-pair mean differences) is significant at `alpha`,
    "better" when the change is significant in the good direction, else "ok".
    """
    a, b = _ok_values(df_a), _ok_values(df_b)
    if metrics is not None:
        wanted = set(metrics)
        a, b = a[a["metric"].isin(wanted)], b[b["metric"].isin(wanted)]
    if a.empty or b.empty:
        return pd.DataFrame(columns=list(COMPARE_COLUMNS))
    keys = [*JOB_IDENTITY, "metric"]
    paired = _per_job_values(a, keys).merge(
        _per_job_values(b, keys).drop(columns=["method", "preset"]), on=keys, how="inner", suffixes=("_a", "_b")
    )
    failed = (_failed_counts(df_a), _failed_counts(df_b))
    declared = directions(b, a)
    rows = [
        _compared_row(str(label), metric, group, higher_is_better(str(metric), declared), max_drop, alpha, failed)
        for (label, metric), group in paired.groupby(["label", "metric"], dropna=False, sort=True)
    ]
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def _per_job_values(values: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean value and joined weights per job identity and metric (the unit matched across the two runs)."""
    values = values.assign(weights=weights_description(values), label=_labels(values), sweep=_sweep_key(values))
    return (
        values.groupby([*keys, "method", "preset"], dropna=False)
        .agg(value=("value", "mean"), weights=("weights", _joined_unique))
        .reset_index()
    )


def _compared_row(
    label: str,
    metric: object,
    group: pd.DataFrame,
    better_up: bool,
    max_drop: float,
    alpha: float,
    failed: tuple[dict[str, int], dict[str, int]],
) -> dict[str, object]:
    """One (label, metric) row of :func:`compare_runs`: the paired statistics of B − A and the verdict."""
    diffs, pairs = _per_pair_differences(group, "value_b", "value_a")
    statistics = _paired_statistics(diffs, pairs)
    drop = -diffs.mean() if better_up else diffs.mean()
    p_value = float(statistics["p_value"])
    significant = bool(np.isfinite(p_value) and p_value < alpha)
    verdict = "fail" if (drop > max_drop and significant) else ("better" if (drop < 0 and significant) else "ok")
    return {
        "metric": metric,
        "label": label,
        "method": group["method"].iloc[0],
        "preset": group["preset"].iloc[0],
        **{key: statistics[key] for key in ("n", "n_pairs", "ci_low", "ci_high", "test")},
        "mean_a": group["value_a"].mean(),
        "mean_b": group["value_b"].mean(),
        "delta": diffs.mean(),
        "p_value": p_value,
        "higher_is_better": better_up,
        "drop": drop,
        "verdict": verdict,
        "n_failed_a": failed[0].get(label, 0),
        "n_failed_b": failed[1].get(label, 0),
        "weights": _joined_unique(pd.concat([group["weights_a"], group["weights_b"]])),
    }


def _labels(df: pd.DataFrame) -> pd.Series:
    """Each row's method label (method, preset and variant), from its planned ``label`` where recorded."""
    derived = method_labels(df, variants=True)
    return _column(df, "label").where(_column(df, "label").notna(), derived).astype(str)


def _failed_counts(df: pd.DataFrame) -> dict[str, int]:
    """Method label -> its failed jobs."""
    if df.empty or "status" not in df.columns:
        return {}
    failed = df[df["status"].eq("failed")].drop_duplicates("job_id")
    return {str(key): int(n) for key, n in failed.assign(label=_labels(failed)).groupby("label").size().items()}
