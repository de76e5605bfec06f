"""The one bootstrap of the harness: a seeded percentile CI of Σ values / Σ weights over resampled units.

With no weights it is the CI of the mean; with weights (e.g. intersections over unions) the CI of a pooled
ratio; with clusters (e.g. a benchmark pair, whose seeds share a source and a target; a user-study question,
whose ratings move together) whole clusters are resampled, and with ``nested`` the members of each drawn
cluster are resampled in turn (a two-stage bootstrap: pairs, then seeds inside a pair). Seeded, so a table is
the same every time it is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95
MIN_CLUSTERS = 3  # below this many units (pairs) a table shows the mean without an interval and awards no ★
_CHUNK_CELLS = 4_000_000  # resamples are drawn in chunks of at most this many member draws (memory stays bounded)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    clusters: Sequence[object] | np.ndarray | None = None,
    *,
    nested: bool = False,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of Σ values / Σ weights (weights 1: the mean), resampling ``clusters``
    (default: every value is its own unit); ``nested``: members are resampled inside each drawn cluster too.
    (nan, nan) when there is nothing to resample."""
    values = np.asarray(values, dtype=float)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    if clusters is None:
        statistics = _resample_units(values, weights, rng, n_resamples)
    else:
        try:
            _, index = np.unique(np.asarray(clusters), return_inverse=True)
        except TypeError:  # mixed types (e.g. a pair id beside None): compared as text
            _, index = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
        index = index.reshape(-1)
        if nested:
            statistics = _resample_nested(values, weights, index, rng, n_resamples)
        else:
            sums, totals = np.bincount(index, weights=values), np.bincount(index, weights=weights)
            statistics = _resample_units(sums, totals, rng, n_resamples)
    statistics = statistics[np.isfinite(statistics)]
    if statistics.size == 0:
        return (float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(statistics, [tail, 100.0 - tail])
    return (float(low), float(high))


def _resample_units(sums: np.ndarray, totals: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    out = np.empty(n_resamples)
    chunk = max(1, _CHUNK_CELLS // max(sums.size, 1))
    for start in range(0, n_resamples, chunk):
        draws = rng.integers(0, sums.size, size=(min(chunk, n_resamples - start), sums.size))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + len(draws)] = sums[draws].sum(axis=1) / totals[draws].sum(axis=1)
    return out


def _resample_nested(
    values: np.ndarray, weights: np.ndarray, index: np.ndarray, rng: np.random.Generator, n_resamples: int
) -> np.ndarray:
    """Two-stage bootstrap: draw clusters with replacement, then draw each drawn cluster's members with
    replacement (as many as it has)."""
    order = np.argsort(index, kind="stable")
    values, weights, index = values[order], weights[order], index[order]
    sizes = np.bincount(index)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_clusters, widest = sizes.size, int(sizes.max())
    unit_weights = bool(np.all(weights == 1.0))  # a mean: the resample's total weight is its size
    slots = np.arange(widest)
    out = np.empty(n_resamples)
    chunk = max(1, _CHUNK_CELLS // max(n_clusters * widest, 1))
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        drawn = rng.integers(0, n_clusters, size=(count, n_clusters))  # clusters
        if widest == 1:  # every cluster has one member (one seed per pair): a member draw has one outcome
            sums = np.take(values, drawn).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start : start + count] = sums / (
                    n_clusters if unit_weights else np.take(weights, drawn).sum(axis=1)
                )
            continue
        size = sizes[drawn][..., None]  # (count, n_clusters, 1)
        member = np.floor(rng.random((count, n_clusters, widest)) * size).astype(np.int64)
        used = slots[None, None, :] < size  # a cluster draws as many members as it has
        position = offsets[drawn][..., None] + member
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + count] = np.where(used, values[position], 0.0).sum(axis=(1, 2)) / np.where(
                used, weights[position], 0.0
            ).sum(axis=(1, 2))
    return out


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error over the given tests; nan stays nan)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    running = 0.0
    for rank, position in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[position]))
        adjusted[position] = running
    return adjusted
