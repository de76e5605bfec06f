"""The report's tables: method labels in the suite's order, variants of a preset (the ablations), the per-metric and
ablation tables ("mean [CI] n=…"), the failed jobs and summary.md."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from clic import is_random_weights
from harness.analyse import headline as headline_table
from harness.analyse.aggregate import (
    ALL_CATEGORIES,
    INTERVAL_NOTE,
    format_number,
    higher_is_better,
    method_labels,
    to_markdown,
)
from harness.analyse.costs import COST_NOTE
from harness.plan.identity import method_label

SUMMARY_KEYS = ("method", "preset", "category", "metric")  # preset: the preset and variant ("paper t_start=4")
PAIRED_NOTE = (
    "Pairs: the same pair, seed, task and object at the same point of the suite's sweep. Tests on per-pair "
    "mean differences: Wilcoxon signed-rank, the paired t-test below 6 pairs or when all differences are "
    "zero, none below 3 pairs; p_holm: Holm-corrected across the metrics of each comparison (one row group "
    "of method and reference)."
)


# ---------------------------------------------------------------------------------------------- variants
# Suite entries of one method and preset that differ only in their learning overrides (the ablations of
# benchmarks/ablations.yaml) are told apart by the `variant` the plan gave them ("no_att", see
# harness.plan.identity); every table, plot and grid shows such a variant as its own preset, "clic/paper no_att".


def with_variants(results: pd.DataFrame) -> pd.DataFrame:
    """`results` plus `base_preset`; `preset` becomes "paper no_att" where the row's planned `variant` is set."""
    variants = results["variant"] if "variant" in results.columns else pd.Series("", index=results.index)
    variants = variants.fillna("").astype(str)
    preset = results["preset"]
    named = preset.map(lambda value: isinstance(value, str) and bool(value)) if len(preset) else preset.astype(bool)
    joined = preset.where(~named, preset.astype(str) + " " + variants).str.strip() if variants.ne("").any() else preset
    # "paper no_att"; a preset that is no text (a method without presets) takes the variant alone, as before
    presets = joined.where(named | variants.eq(""), variants)
    return results.assign(base_preset=preset, variant=variants, preset=presets)


def ablation_labels(results: pd.DataFrame, run_info: Mapping[str, Any]) -> list[str]:
    """Labels of every preset and variant of the methods that have variants, in the suite file's order (the
    plan's method runs recorded in run.json)."""
    planned_runs = (run_info.get("plan") or {}).get("methods") or []
    # Variants of learning (the plan's method runs with a variant) are ablations; the points of a transfer sweep
    # ("t_start=4") are not: they have the t_start figure.
    varied = (
        {str(run.get("method")) for run in planned_runs if run.get("variant")}
        if planned_runs
        else set(results.loc[results["variant"].ne(""), "method"])
    )
    if not varied:
        return []
    present = set(method_labels(results[results["method"].isin(varied)]).unique())
    planned = planned_labels(run_info)
    ordered = [label for label in dict.fromkeys(planned) if label in present]
    return ordered + sorted(present - set(ordered))


def ablation_reference(results: pd.DataFrame, run_info: Mapping[str, Any], reference: str) -> str | None:
    """The label the ablations of the reference's method are paired against (Fig. 8's reading): among that
    method's ablation labels, the first in the suite's order without a variant, else the first; None when the
    method has no variants (``reference``: a method or a method label)."""
    if results.empty or "method" not in results.columns:
        return None
    labels = method_labels(results)
    named = results["method"].eq(reference) | labels.eq(reference) | results.get("label", labels).eq(reference)
    methods = set(results.loc[named, "method"].astype(str))
    own = [
        label for label in ablation_labels(results, run_info) if label in set(labels[results["method"].isin(methods)])
    ]
    if len(own) < 2:
        return None
    plain = set(labels[results["method"].isin(methods) & results["variant"].eq("")])
    return next((label for label in own if label in plain), own[0])


def ablation_rows(results: pd.DataFrame, base: str) -> pd.DataFrame:
    """The rows of ``base`` and of its variants: its method and preset, any variant (``base_preset``: the preset
    without its variant, :func:`with_variants`)."""
    labels = method_labels(results)
    of_base = results[labels.eq(base)]
    method, preset = of_base["method"].iloc[0], of_base["base_preset"].iloc[0]
    return results[results["method"].eq(method) & results["base_preset"].eq(preset)]


def planned_labels(run_info: Mapping[str, Any]) -> list[str]:
    """Method labels in the suite file's order (the plan's method runs recorded in run.json)."""
    return [str(run.get("label")) for run in ((run_info.get("plan") or {}).get("methods") or []) if run.get("label")]


def label_order(planned: Sequence[str], results: pd.DataFrame) -> list[str]:
    """Every method label of `results` in the suite's order: each planned label followed by its sweep points
    ("clic/paper t_start=2", "… t_start=10", numbers in numeric order), then labels the plan does not name."""
    labels = method_labels(results) if {"method", "preset"} <= set(results.columns) else pd.Series(dtype=object)
    present = sorted(set(labels.unique()), key=_natural_key)  # one label per distinct method and preset
    ordered: list[str] = []
    for head in dict.fromkeys(planned):
        ordered += [
            label for label in present if (label == head or label.startswith(head + " ")) and label not in ordered
        ]
    return ordered + [label for label in present if label not in ordered]


def _natural_key(text: str) -> list[object]:
    return [
        (0, float(part)) if re.fullmatch(r"\d+(\.\d+)?", part) else (1, part)
        for part in re.split(r"(\d+(?:\.\d+)?)", text)
    ]


def ablation_table(summary: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """A row per ablation label, a column per metric: "mean [CI] n=…" over all categories."""
    overall = summary[summary["category"].eq(ALL_CATEGORIES) & summary["metric"].notna()]
    overall = overall.assign(label=[method_label(m, p) for m, p in zip(overall["method"], overall["preset"])])
    overall = overall[overall["label"].isin(labels)]
    if overall.empty:
        return pd.DataFrame({"method": labels})
    cells = [
        cell_text(m, lo, hi, n)
        for m, lo, hi, n in zip(overall["mean"], overall["ci_low"], overall["ci_high"], overall["n"])
    ]
    table = overall.assign(cell=cells).pivot_table(index="label", columns="metric", values="cell", aggfunc="first")
    table["weights"] = overall.groupby("label")["weights"].agg(lambda w: ", ".join(sorted(set(w))))
    return table.reindex(labels).rename_axis(None, axis=1).reset_index().rename(columns={"label": "method"})


def cell_text(mean: float, low: float, high: float, n: int) -> str:
    """ "mean [low, high] n=…", without the interval where there is none (fewer than 3 pairs)."""
    ci = f" [{format_number(low)}, {format_number(high)}]" if np.isfinite(low) else ""
    return f"{format_number(mean)}{ci} n={n}"


def metric_tables(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per metric: a row per method/preset, a column per category ("mean [CI] n=…")."""
    tables: dict[str, pd.DataFrame] = {}
    rated = summary[summary["metric"].notna()]
    failed = summary.drop_duplicates(["method", "preset", "category"]).set_index(["method", "preset", "category"])
    for metric, group in rated.groupby("metric", sort=True):
        group = group.assign(
            label=[method_label(m, p) for m, p in zip(group["method"], group["preset"])],
            cell=[
                cell_text(m, lo, hi, n) + (headline_table.TINY_MARK if is_random_weights(w) else "")
                for m, lo, hi, n, w in zip(
                    group["mean"], group["ci_low"], group["ci_high"], group["n"], group["weights"]
                )
            ],
        )
        table = group.pivot_table(index="label", columns="category", values="cell", aggfunc="first")
        categories = sorted(c for c in table.columns if c != ALL_CATEGORIES)
        table = table.reindex(columns=categories + ([ALL_CATEGORIES] if ALL_CATEGORIES in table.columns else []))
        per_method = group.drop_duplicates("label").set_index("label")
        table["n_failed"] = [
            int(
                failed.loc[
                    (per_method.loc[label, "method"], per_method.loc[label, "preset"], ALL_CATEGORIES), "n_failed"
                ]
            )
            for label in table.index
        ]
        table["metric_scale"] = per_method.loc[table.index, "metric_scale"]
        table["weights"] = group.groupby("label")["weights"].agg(lambda w: ", ".join(sorted(set(w))))
        tables[str(metric)] = table.rename_axis(None, axis=1).reset_index().rename(columns={"label": "method"})
    return tables


def failure_list(results: pd.DataFrame) -> pd.DataFrame:
    """One row per failed job: job, method, preset, pair, task, error."""
    columns = ["job_id", "method", "preset", "pair_id", "task", "error"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    failed = results[results["status"].eq("failed")].drop_duplicates("job_id")
    return failed[columns].sort_values(["method", "preset", "pair_id"]).reset_index(drop=True)


def direction_text(metric: str, declared: Mapping[str, bool]) -> str:
    return "higher is better" if higher_is_better(metric, declared) else "lower is better"


def summary_markdown(
    head: headline_table.Headline,
    per_metric: Mapping[str, pd.DataFrame],
    paired: pd.DataFrame,
    failures: pd.DataFrame,
    reference: str,
    ablation: pd.DataFrame,
    declared: Mapping[str, bool],
    costs: pd.DataFrame | None = None,
    ablation_paired: tuple[str, pd.DataFrame] | None = None,
) -> str:
    """summary.md: the headline, the per-category tables, the ablations (with each variant's paired difference
    against ``ablation_paired``'s label), the paired differences, the costs and the count of failed jobs."""
    parts = [
        "# Results\n",
        headline_table.to_markdown(head),
        "## Per category\n",
        f"Mean [95% CI] per method and category ({INTERVAL_NOTE}); raw values "
        "(see metric_scale)" + (f"; {headline_table.TINY_MARK} tiny-random" if head.tiny_random else "") + ".\n",
    ]
    for metric, table in per_metric.items():
        parts.append(f"### {metric} ({direction_text(metric, declared)})\n\n{to_markdown(table, note='')}")
    if not ablation.empty:
        parts.append(f"## Ablations (all categories)\n\n{to_markdown(ablation, note='')}")
    if ablation_paired is not None:
        parts.append(
            f"### Ablations paired against {ablation_paired[0]}\n\n{PAIRED_NOTE}\n\n"
            + to_markdown(ablation_paired[1], note="")
        )
    parts.append(f"## Paired differences against {reference}\n\n{PAIRED_NOTE}\n\n{to_markdown(paired, note='')}")
    if costs is not None and not costs.empty:
        parts.append(f"## Costs\n\n{COST_NOTE}\n\n{to_markdown(costs, note='')}")
    parts.append(f"## Failed jobs: {len(failures)}\n")
    return "\n".join(parts)
