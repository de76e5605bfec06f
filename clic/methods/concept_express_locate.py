"""ConceptExpress's config and its first half: locating the concepts of one image, without masks, by FINCH
clustering of the UNet's self-attention (released ``train.py``; line numbers in :mod:`clic.methods.concept_express`).

Part of :mod:`clic.methods.concept_express`, which re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import AttentionCapture, restore_default_processors
from ..components import SDComponents
from ..learn import capture_resolution, encode_text, vae_moments
from ..selfattention import recording_self_attention
from ..settings import MethodConfig

CODE = "haoosz/ConceptExpress train.py"


@dataclass(frozen=True)
class ConceptExpressConfig(MethodConfig):
    """ConceptExpress's learning config. Its objective is fixed (masked diffusion + attention alignment + SupCon,
    weighted by the fields below), so unlike the shared loop's configs it has no ``terms``."""

    steps: int = 500  # scripts/train.sh --phase1_train_steps 500
    lr: float = 5e-4  # scripts/train.sh --initial_learning_rate 5e-4
    weight_decay: float = 1e-2  # train.py --adam_weight_decay 1e-2 (AdamW)
    lambda_attention: float = 1e-5  # scripts/train.sh --lambda_attention 1e-5
    weight_contrast: float = 1e-3  # scripts/train.sh --weight_contrast 1e-3
    temperature: float = 0.07  # scripts/train.sh --temperature 0.07
    split_tokens: int = 5  # scripts/train.sh --num_split_tokens 5
    merge_step: int = 100  # scripts/train.sh --merge_step 100
    p_flip: float = 0.5  # DreamBoothDataset flip_p 0.5 (the only augmentation)
    sinkhorn_epsilon: float = 1e-3  # ptp_utils.wasser_loss: SinkhornOT(..., 1e-3, 200)
    sinkhorn_iterations: int = 200
    prompt: str = "a photo of {tokens}"  # train.py L865 ("a photo of " + " and ".join(tokens))
    placeholder: str = "<c*>"
    vocabulary_offset: int = 100  # init rows: the vocabulary's last 2·num_of_assets (50) rows onward (L894-896)
    pre_cluster_floor: int = 10  # cluster_attention: the first FINCH partition with ≥ 10 clusters and < 10 next
    saliency_threshold: float = 1.0  # cluster_attention: compute_score(mask, eot) > 1.0
    attention_heads: str = "last_half"  # ptp_utils.py L137-140: the store keeps attn[h // 2:]
    max_grad_norm: float = 1.0  # train.py --max_grad_norm 1.0, text encoder (token rows) clipped (L1458-1467)
    resolution: int | None = None  # the source's side (recorded)

    MERGED: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = "ConceptExpress option(s)"

    def validate(self) -> None:
        if self.steps <= 0 or self.split_tokens <= 0:
            raise ValueError(f"steps and split_tokens must be positive, got {self.steps}, {self.split_tokens}")
        if self.attention_heads not in ("all", "last_half"):
            raise ValueError(f"attention_heads must be 'all' or 'last_half', got {self.attention_heads!r}")


# ------------------------------------------------------------------------------------------ FINCH
def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, Q) matrix ½(KL(a_p‖b_q) + KL(b_q‖a_p)) between rows of distributions (ptp_utils.kld_distance)."""
    log_a, log_b = a.clamp_min(1e-12).log(), b.clamp_min(1e-12).log()
    a_log_a = (a * log_a).sum(-1, keepdim=True)
    b_log_b = (b * log_b).sum(-1, keepdim=True)
    return 0.5 * ((a_log_a - a @ log_b.T) + (b_log_b - b @ log_a.T).T)


def component_count(mask: np.ndarray) -> int:
    """4-connected components of a {0, 1} grid (ptp_utils.get_num_mask)."""
    from scipy import ndimage

    return int(ndimage.label(mask > 0)[1])


def spatially_connected(masks: np.ndarray) -> np.ndarray:
    """(n, n) 1 where the union of two masks has fewer components than the two apart (ptp_utils.get_connect)."""
    n = masks.shape[0]
    connect = np.zeros((n, n))
    counts = [component_count(m) for m in masks]
    for i in range(n - 1):
        for j in range(i + 1, n):
            connect[i, j] = connect[j, i] = float(component_count(masks[i] + masks[j]) < counts[i] + counts[j])
    return connect


@dataclass
class Partition:
    labels: np.ndarray  # (N,) cluster of each point
    count: int
    threshold: float | None  # max(orig_dist · adj) of the round that made it (finch.py L207); None for the first


def finch(
    data: torch.Tensor,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = symmetric_kl,
    min_sim: float | None = None,
    masks: np.ndarray | None = None,
) -> list[Partition]:
    """FINCH (Sarfraz et al., CVPR 2019) as ConceptExpress's clustering/finch.py runs it: link each point to its
    first neighbour (and points sharing one), optionally cut links longer than ``min_sim`` and links between
    masks that do not touch, take connected components, repeat on the clusters' means until nothing merges.
    Each later round records max(orig_dist · adj) (L207): adj = A·Aᵀ without its diagonal (A: first-neighbour
    links + I, L56-61) is 2 for mutual first neighbours, so their distance counts twice."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    def one_round(points: torch.Tensor, member_masks: np.ndarray | None) -> tuple[np.ndarray, int, float]:
        n = points.shape[0]
        dist = distance(points, points).numpy().astype(np.float64)
        np.fill_diagonal(dist, 1e12)  # finch.py L36
        first = dist.argmin(axis=1)
        link = csr_matrix((np.ones(n), (np.arange(n), first)), shape=(n, n)) + csr_matrix(np.eye(n))
        adjacency = (link @ link.T).toarray()
        np.fill_diagonal(adjacency, 0)
        if min_sim is not None:
            adjacency[dist > min_sim] = 0
        if member_masks is not None:
            adjacency[spatially_connected(member_masks) == 0] = 0
        count, labels = connected_components(csr_matrix(adjacency), directed=True, connection="weak")
        used = float((dist * adjacency).max())  # after the cuts, as L207 reads the adjacency get_clust changed
        return labels, count, used

    def means(values: torch.Tensor, labels: np.ndarray, count: int) -> torch.Tensor:
        index = torch.as_tensor(labels)
        return torch.stack([values[index == k].mean(0) for k in range(count)])

    def merged_masks(labels: np.ndarray, count: int) -> np.ndarray | None:
        return None if masks is None else np.stack([masks[labels == k].sum(0) for k in range(count)])

    labels, count, _ = one_round(data, masks)
    partitions = [Partition(labels, count, min_sim)]
    points, member_masks = means(data, labels, count), merged_masks(labels, count)
    while True:
        round_labels, round_count, used = one_round(points, member_masks)
        if round_count == 1 or partitions[-1].count - round_count < 1:
            break
        labels = round_labels[partitions[-1].labels]
        partitions.append(Partition(labels, round_count, used))
        points, member_masks = means(data, labels, round_count), merged_masks(labels, round_count)
    return partitions


# ------------------------------------------------------------------------------------------ locating
def aggregate_self_attention(maps: dict[str, torch.Tensor], counts: dict[str, int], side: int) -> torch.Tensor:
    """(side², side²): every layer's head-averaged self-attention, keys bilinear and queries repeated to the
    latent grid, averaged with weights res/side (get_self_attention, L1649-1676)."""
    total, weights = None, 0.0
    for name, summed in maps.items():
        layer = summed / counts[name]  # (P, P)
        res = math.isqrt(layer.shape[0])
        keys = F.interpolate(layer.reshape(-1, 1, res, res), size=(side, side), mode="bilinear", align_corners=False)
        grid = keys.reshape(res, res, side * side)
        factor = side // res
        grid = grid.repeat_interleave(factor, dim=0).repeat_interleave(factor, dim=1).reshape(side * side, side * side)
        weight = res / side
        total = grid * weight if total is None else total + grid * weight
        weights += weight
    return total / weights


def saliency_score(mask: torch.Tensor, eot: torch.Tensor) -> float:
    """compute_score: mean of the end-of-text map inside the mask over its mean on the image."""
    return float(((mask * eot).sum() / mask.sum()) / eot.mean())


def cluster_concepts(
    rows: torch.Tensor, eot: torch.Tensor, config: ConceptExpressConfig = ConceptExpressConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept masks (K, s, s) and feature maps (K, s²) from self-attention rows (s², s²) and the end-of-text
    saliency map (s, s) in [0, 1] (cluster_attention, L1689-1790). K is whatever the clustering finds."""
    side = eot.shape[-1]
    x = rows / rows.sum(-1, keepdim=True)
    partitions = finch(x)
    index = next(
        (
            i
            for i in range(len(partitions) - 1)
            if partitions[i].count >= config.pre_cluster_floor and partitions[i + 1].count < config.pre_cluster_floor
        ),
        None,
    )
    if index is None:  # no crossing (a small grid): the last partition with ≥ floor clusters, else the first
        above = [i for i, p in enumerate(partitions) if p.count >= config.pre_cluster_floor]
        index = above[-1] if above else 0
    labels = torch.as_tensor(partitions[index].labels)
    candidates, features = [], []
    for k in range(int(labels.max()) + 1):
        mask = (labels == k).float().reshape(side, side)
        if saliency_score(mask, eot) > config.saliency_threshold:
            candidates.append(mask)
            features.append(x[labels == k].mean(0))
    if not candidates:
        return torch.zeros(0, side, side), torch.zeros(0, side * side)
    mask_stack, feature_stack = torch.stack(candidates), torch.stack(features)
    if len(candidates) == 1:
        return mask_stack, feature_stack
    merge = finch(feature_stack, min_sim=partitions[index].threshold, masks=mask_stack.numpy())[-1].labels
    groups = torch.as_tensor(merge)
    masks = torch.stack([mask_stack[groups == k].sum(0) for k in range(int(groups.max()) + 1)])
    feats = torch.stack([feature_stack[groups == k].mean(0) for k in range(int(groups.max()) + 1)])
    return masks.clamp(max=1), feats


@torch.no_grad()
def locate_concepts(
    components: SDComponents, image: torch.Tensor, config: ConceptExpressConfig = ConceptExpressConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (K, s, s), features (K, s²)) at the latent side s of ``image`` ((3, R, R) in [-1, 1])."""
    latents = vae_moments(components, image[None]).chunk(2, dim=1)[0] * components.vae.config.scaling_factor
    side = latents.shape[-1]
    text, ids = encode_text(components, [""])
    eot = int((ids[0] == components.tokenizer.eos_token_id).nonzero()[0, 0])
    capture = AttentionCapture(components.unet, "up+down", train_kv=False)
    capture.same_resolution_only = True  # aggregate_attention(res=16, ("up", "down")): one resolution
    capture.buffer.heads = config.attention_heads
    try:
        capture.set_tokens([[eot]])
        with recording_self_attention(components.unet, "all", max_side=side, heads=config.attention_heads) as maps:
            components.unet(
                latents, torch.zeros(1, dtype=torch.long, device=latents.device), encoder_hidden_states=text
            )
        eot_map = capture.mean_map(capture_resolution(capture, components))[0, 0]
    finally:
        capture.set_tokens(None)
        restore_default_processors(components.unet)
    eot_map = F.interpolate(eot_map[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    eot_map = (eot_map - eot_map.min()) / (eot_map.max() - eot_map.min()).clamp_min(1e-12)
    rows = aggregate_self_attention(maps.sums, maps.counts, side)
    return cluster_concepts(rows.cpu(), eot_map.cpu(), config)
