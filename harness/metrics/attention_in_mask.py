"""Where the learned token looks during a transfer: the share of its cross-attention map inside the edited region.

The map is the transfer's v* attention (averaged over the denoising steps and the captured layers, min-max
normalised to [0, 1]: the ``attention.png`` artifact), resized to the target image. l_att trains the token to
attend inside the concept's mask (CLiC §3.1 Eq. (1)) and the paper's Fig. 8 shows the ablation without it
spreading the attention; this is that quantity as a number. Min-max normalisation removes the map's uniform
floor, so the share follows where the attention varies: a flat map normalises to zero and gets no value.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import ClosedFormMetric, MetricValue, Sample, check_mask


def attention_share(attention: np.ndarray, mask: np.ndarray) -> float | None:
    """Σ(A · M) / ΣA of a non-negative map A and a bool mask M of one size; None when A has no mass."""
    total = float(attention.sum())
    return float(attention[mask].sum()) / total if total > 0 else None


class AttentionInMask(ClosedFormMetric):
    """ "attention_in_mask" = Σ(A · M) / ΣA: A the token's normalised attention map, M the target mask."""

    name: ClassVar[str] = "attention_in_mask"
    values: ClassVar[dict[str, bool]] = {"attention_in_mask": True}
    version: ClassVar[str] = "1.0"
    scale: ClassVar[str] = "share of the token's min-max normalised attention inside the target mask, [0, 1]"
    tasks: ClassVar[frozenset[str]] = frozenset({"transfer"})

    @staticmethod
    def _score(sample: Sample) -> list[MetricValue]:
        if sample.attention is None or sample.target_mask is None:
            return []
        mask = check_mask(sample.target_mask, f"{sample.job_id}: target_mask")
        attention = np.asarray(sample.attention, dtype=np.float64)
        if attention.shape != mask.shape:
            raise ValueError(f"{sample.job_id}: attention map {attention.shape} and target mask {mask.shape} differ")
        share = attention_share(np.clip(attention, 0.0, None), mask)
        return [] if share is None else [MetricValue("attention_in_mask", share)]
