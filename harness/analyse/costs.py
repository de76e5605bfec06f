"""What a run cost, per method label: median seconds per concept learned and per task, and peak memory.

Read from the result rows (``learn_seconds``, ``task_seconds``, ``peak_memory_mb``, ``learn_peak_memory_mb``):
one value per job (its rows repeat them per metric) and one learning time per concept (a concept learned
earlier, or reused, records none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.plan.identity import method_label

COST_NOTE = (
    "Seconds and memory as the jobs recorded them: learn = learning one concept (reused concepts not "
    "counted), task = one transfer/generation/match after learning; peak memory: CUDA max allocated on a "
    "GPU, peak RSS on the CPU (the largest over the method's jobs)."
)
COST_COLUMNS = [
    "method",
    "jobs",
    "concepts learned",
    "median learn s",
    "median task s",
    "total s",
    "peak task memory MB",
    "peak learn memory MB",
]


def cost_table(results: pd.DataFrame, order: Sequence[str] = ()) -> pd.DataFrame:
    """A row per method label (in `order`, then sorted): jobs, concepts learned, median learn and task seconds,
    total seconds, peak task and learning memory (MB)."""
    if results.empty or "job_id" not in results:
        return pd.DataFrame(columns=COST_COLUMNS)
    jobs = results.drop_duplicates("job_id")
    jobs = jobs.assign(label=[method_label(m, p) for m, p in zip(jobs["method"], jobs["preset"])])

    def column(name: str) -> pd.Series:
        return pd.to_numeric(jobs[name], errors="coerce") if name in jobs else pd.Series(np.nan, index=jobs.index)

    jobs = jobs.assign(
        learn_s=column("learn_seconds"),
        task_s=column("task_seconds"),
        memory=column("peak_memory_mb"),
        learn_memory=column("learn_peak_memory_mb"),
    )
    concept = jobs["concept_id"] if "concept_id" in jobs else jobs["job_id"]
    learned = jobs.assign(concept=concept.fillna(jobs["job_id"])).dropna(subset=["learn_s"])
    learned = learned.drop_duplicates(["label", "concept"])
    rows = []
    present = set(jobs["label"])
    for label in [lab for lab in dict.fromkeys(order) if lab in present] + sorted(present - set(order)):
        mine, mine_learned = jobs[jobs["label"].eq(label)], learned[learned["label"].eq(label)]
        rows.append(
            {
                "method": label,
                "jobs": len(mine),
                "concepts learned": len(mine_learned),
                "median learn s": mine_learned["learn_s"].median(),
                "median task s": mine["task_s"].median(),
                "total s": mine_learned["learn_s"].sum() + mine["task_s"].sum(),
                "peak task memory MB": mine["memory"].max(),
                "peak learn memory MB": mine["learn_memory"].max(),
            }
        )
    return pd.DataFrame(rows, columns=COST_COLUMNS)
