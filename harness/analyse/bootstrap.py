"""The one bootstrap of the harness: a seeded percentile CI of Σ values / Σ weights over resampled units.

With no weights it is the CI of the mean; with weights (e.g. intersections over unions) the CI of a pooled
ratio; with clusters (e.g. a user-study question, whose ratings move together) whole clusters are resampled.
Seeded, so a table is the same every time it is written.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_ci(values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None,
                 clusters: Sequence[object] | np.ndarray | None = None, *, n_resamples: int = N_RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of Σ values / Σ weights (weights 1: the mean), resampling ``clusters``
    (default: every value is its own unit). (nan, nan) when there is nothing to resample."""
    values = np.asarray(values, dtype=float)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    if values.size == 0:
        return (float("nan"), float("nan"))
    if clusters is None:
        sums, totals = values, weights
    else:
        _, index = np.unique(np.asarray(clusters), return_inverse=True)
        sums, totals = np.bincount(index, weights=values), np.bincount(index, weights=weights)
    draws = np.random.default_rng(seed).integers(0, sums.size, size=(n_resamples, sums.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        statistics = sums[draws].sum(axis=1) / totals[draws].sum(axis=1)
    statistics = statistics[np.isfinite(statistics)]
    if statistics.size == 0:
        return (float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(statistics, [tail, 100.0 - tail])
    return (float(low), float(high))
