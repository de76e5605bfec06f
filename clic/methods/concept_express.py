"""ConceptExpress (Hao et al., ECCV 2024): unsupervised concept extraction from one image.

Following the released code (github haoosz/ConceptExpress, ``train.py`` and ``scripts/train.sh``; line numbers
below are of that ``train.py``):

1. Locate — K is *found*, never given (``get_self_attention`` / ``cluster_attention``, L1634-1790). One UNet
   pass on the un-noised latents at t = 0 with the empty prompt records the self-attention of every layer
   (down, mid, up); each layer's map averaged over the heads the released store keeps (attn[h // 2:],
   ``ptp_utils.py`` L137-140: with its batch of 1, the last half of the heads) is upsampled to the latent grid (keys bilinear, queries
   repeated) and the layers are averaged with weights res/64. Rows (one distribution per pixel) are
   *pre-clustered* with FINCH (first-neighbour clustering, symmetric KL distance) at the first partition with
   ≥ 10 clusters whose next has < 10; each cluster is kept when its mean end-of-text-token cross-attention
   (16² up/down maps, min-max normalised) exceeds the image mean (score > 1: salient, not background); the
   kept clusters are *merged* by FINCH again on their mean rows, only across spatially connected masks and
   only below the threshold of the pre-clustering round, max(orig_dist · adj) with the adjacency A·Aᵀ that
   counts mutual first neighbours twice (``clustering/finch.py`` L56-61, L207). Each merged cluster is a concept: a mask
   and a mean self-attention map ("feature").
2. Learn — tokens only, from arbitrary vocabulary rows (L891-897: the rows 2·50 before the vocabulary's end),
   first *split* (5 tokens per concept, L622-627), merged into their mean at step 100 (L1236-1253). Each step
   denoises one row per token ("a photo of <c>") and, once merged, one joint row ("a photo of <c1> and <c2> …",
   L654-660), each with its own noise and t and its own optimizer step (L1299-1470). A row's loss is the
   masked diffusion loss (max of its tokens' masks) + λ_att (1e-5) × Σ_tokens Sinkhorn-Wasserstein distance
   (ε 1e-3, 200 iterations, Euclidean grid cost) between the token's 16² cross-attention map and its concept's
   feature map (L1395-1419) + while split, 1e-3 × SupCon(T = 0.07) over the normalised split-token embeddings
   labelled by concept (L1433-1449). AdamW lr 5e-4, weight decay 1e-2, 500 steps (scripts/train.sh); the only
   augmentation is a horizontal flip with probability 0.5 (masks and features flipped with the image, L540-543,
   L710-714).

Differences kept on purpose: locating uses the posterior mean (the code samples the latent) so a seed fixes the
masks; the located masks are re-matched never (the code locates once, at step 0, too); mixed precision is not
reproduced; a FINCH run with no partition of ≥ 10 clusters (tiny grids) uses its last partition with ≥ 10 or
else its first (the code would stop with an unbound index). The token gradient is clipped to norm 1 as the code
clips it: ``--no_train_text_encoder`` is ``store_false`` (L203-207), so ``train_text_encoder`` is True by default
and the text encoder's parameters, the token rows among them, are clipped with ``--max_grad_norm`` 1.0 (L344,
L1458-1467); the code's norm also counts the gradient reaching the prompt's other vocabulary rows, which here do
not train.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import AttentionCapture, restore_default_processors
from ..concept import LearnedConcept
from ..learn import ConceptSource, capture_resolution, encode_text, sample_latents, seed_everything, vae_moments
from ..models import SDComponents
from ..prediction import training_target
from ..presets import Setting, preset_overrides
from ..selfattention import recording_self_attention
from ..settings import MethodConfig
from ..tokens import ConceptTokens, merge_concept_embeddings
from .base import Method

ESTIMATED_MASK_KEY = "estimated_mask_{index}"
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


def finch(data: torch.Tensor, distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = symmetric_kl,
          min_sim: float | None = None, masks: np.ndarray | None = None) -> list[Partition]:
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


def cluster_concepts(rows: torch.Tensor, eot: torch.Tensor, config: ConceptExpressConfig = ConceptExpressConfig()
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concept masks (K, s, s) and feature maps (K, s²) from self-attention rows (s², s²) and the end-of-text
    saliency map (s, s) in [0, 1] (cluster_attention, L1689-1790). K is whatever the clustering finds."""
    side = eot.shape[-1]
    x = rows / rows.sum(-1, keepdim=True)
    partitions = finch(x)
    index = next((i for i in range(len(partitions) - 1) if partitions[i].count >= config.pre_cluster_floor
                  and partitions[i + 1].count < config.pre_cluster_floor), None)
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
def locate_concepts(components: SDComponents, image: torch.Tensor, config: ConceptExpressConfig = ConceptExpressConfig()
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
            components.unet(latents, torch.zeros(1, dtype=torch.long, device=latents.device), encoder_hidden_states=text)
        eot_map = capture.mean_map(capture_resolution(capture, components))[0, 0]
    finally:
        capture.set_tokens(None)
        restore_default_processors(components.unet)
    eot_map = F.interpolate(eot_map[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    eot_map = (eot_map - eot_map.min()) / (eot_map.max() - eot_map.min()).clamp_min(1e-12)
    rows = aggregate_self_attention(maps.sums, maps.counts, side)
    return cluster_concepts(rows.cpu(), eot_map.cpu(), config)


# ------------------------------------------------------------------------------------------ losses
class _SinkhornTransport(torch.autograd.Function):
    """Entropic OT cost Σ P_ij C_ij (log-domain Sinkhorn) with emd/emd.py's gradient: λ·log v for ν."""

    @staticmethod
    def forward(ctx, mu: torch.Tensor, nu: torch.Tensor, cost: torch.Tensor, epsilon: float, iterations: int):
        log_mu, log_nu = mu.clamp_min(1e-30).log(), nu.clamp_min(1e-30).log()
        log_u = torch.full_like(mu, -math.log(mu.numel()))
        log_v = torch.full_like(nu, -math.log(nu.numel()))
        kernel = -cost / epsilon
        for _ in range(iterations):
            log_v = log_nu - torch.logsumexp(kernel + log_u[:, None], dim=0)
            log_u = log_mu - torch.logsumexp(kernel + log_v[None, :], dim=1)
        plan = (log_u[:, None] + kernel + log_v[None, :]).exp()
        ctx.save_for_backward(log_u, log_v)
        ctx.epsilon = epsilon
        return (plan * cost).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_u, log_v = ctx.saved_tensors
        return grad * log_u * ctx.epsilon, grad * log_v * ctx.epsilon, None, None, None


def grid_cost(side: int) -> torch.Tensor:
    """Euclidean distance between the cells of a side × side grid (ot.dist(grid, metric='euclidean'))."""
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
    grid = torch.stack([ys.flatten(), xs.flatten()], 1)
    return torch.cdist(grid, grid)


def wasserstein_alignment(target: torch.Tensor, attention: torch.Tensor, epsilon: float = 1e-3,
                          iterations: int = 200) -> torch.Tensor:
    """ptp_utils.wasser_loss: both (s, s) maps normalised to mass 1, OT cost from the feature to the attention."""
    side = target.shape[-1]
    mu = (target / target.sum()).flatten().float()
    nu = (attention / attention.sum()).flatten().float()
    return _SinkhornTransport.apply(mu, nu, grid_cost(side).to(mu.device), epsilon, iterations)


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """utils/loss.py SupConLoss (one view, contrast_mode 'one', base temperature = temperature) on unit rows."""
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    others = ~torch.eye(len(labels), dtype=torch.bool, device=features.device)
    positives = (labels[:, None] == labels[None, :]) & others
    log_prob = logits - torch.log((logits.exp() * others).sum(1, keepdim=True))
    return -((positives * log_prob).sum(1) / positives.sum(1).clamp_min(1)).mean()


# ------------------------------------------------------------------------------------------ learning
def learn_concept_express(components: SDComponents, source: ConceptSource, config: ConceptExpressConfig, *,
                          preset: str = "default", seed: int = 0, progress: bool = False) -> LearnedConcept:
    config.validate()
    generator = seed_everything(seed)
    device = components.unet.device
    image = source.images[0].to(device)
    masks, features = locate_concepts(components, image, config)
    if masks.shape[0] == 0:
        raise ValueError("ConceptExpress found no salient concept in the source image")
    count, side = masks.shape[0], masks.shape[-1]
    names = [config.placeholder] if count == 1 else [config.placeholder.replace("*", f"{k + 1}*") for k in range(count)]
    split_names = [f"{name[:-1]}s{j}>" if name.endswith(">") else f"{name}s{j}" for j in range(config.split_tokens)
                   for name in names]  # token i + j·K is split j of concept i (TokenManager.split_tokens)
    vocabulary = components.text_encoder.get_input_embeddings().weight.detach()
    start = vocabulary.shape[0] - config.vocabulary_offset
    init = [vocabulary[(start + k) % vocabulary.shape[0]].clone() for k in range(len(split_names))]
    components.freeze()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, split_names, init_vectors=init)
    capture = AttentionCapture(components.unet, "up+down", train_kv=False)
    capture.same_resolution_only = True
    capture.buffer.heads = config.attention_heads
    resolution = capture_resolution(capture, components)
    moments = vae_moments(components, image[None])
    flipped_moments = vae_moments(components, image.flip(-1)[None])
    optimizer = torch.optim.AdamW([tokens.parameter], lr=config.lr, weight_decay=config.weight_decay)
    feature_maps = features.reshape(count, side, side)
    merged = False
    loss_log: list[dict[str, float]] = []
    started = time.perf_counter()

    def merge() -> None:
        with torch.no_grad():
            vectors = tokens.parameter.detach().reshape(config.split_tokens, count, -1).mean(0)
        return vectors

    for step in range(config.steps):
        if step == config.merge_step and not merged:
            vectors = merge()
            tokens = ConceptTokens(components.tokenizer, components.text_encoder, names, init_vectors=list(vectors))
            optimizer = torch.optim.AdamW([tokens.parameter], lr=config.lr, weight_decay=config.weight_decay)
            merged = True
        flip = float(torch.rand((), generator=generator)) < config.p_flip
        step_masks = masks.flip(-1) if flip else masks
        step_features = feature_maps.flip(-1) if flip else feature_maps
        concept_of = list(range(count)) if merged else [k % count for k in range(len(tokens.tokens))]
        rows = [[k] for k in range(len(tokens.tokens))] + ([list(range(count))] if merged else [])
        for row in rows:
            latents = sample_latents(components, flipped_moments if flip else moments, generator)
            noise = torch.randn(latents.shape, generator=generator).to(device)
            t = torch.randint(0, components.scheduler.config.num_train_timesteps, (1,), generator=generator).to(device)
            x_t = components.scheduler.add_noise(latents, noise, t)
            text, ids = encode_text(components, [config.prompt.format(tokens=" and ".join(tokens.tokens[k] for k in row))])
            capture.set_tokens([[int((ids[0] == tokens.token_ids[k]).nonzero()[0, 0]) for k in row]])
            eps = components.unet(x_t, t, encoder_hidden_states=text).sample
            attention = capture.mean_map(resolution)[0]  # (len(row), r, r)
            capture.clear()
            region = torch.stack([step_masks[concept_of[k]] for k in row]).amax(0).to(device)[None, None]
            region = F.interpolate(region, size=latents.shape[-2:], mode="nearest")
            target = training_target(components.scheduler, latents, noise, t)
            diffusion = F.mse_loss(eps * region, target * region)
            targets = F.interpolate(step_features[[concept_of[k] for k in row]][:, None].float(), size=(resolution, resolution))
            alignment = sum(wasserstein_alignment(targets[i, 0].to(device), attention[i], config.sinkhorn_epsilon,
                                                  config.sinkhorn_iterations) for i in range(len(row)))
            loss = diffusion + config.lambda_attention * alignment
            values = {"masked_diffusion": float(diffusion.detach()), "wasserstein": float(alignment.detach())}
            if not merged:
                labels = torch.tensor(concept_of, device=device)
                contrast = supervised_contrastive(F.normalize(tokens.parameter, dim=-1), labels, config.temperature)
                loss = loss + config.weight_contrast * contrast
                values["supcon"] = float(contrast.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:  # train_text_encoder is True by default: the token rows are clipped
                torch.nn.utils.clip_grad_norm_([tokens.parameter], config.max_grad_norm)
            optimizer.step()
            values.update(total=float(loss.detach()), step=step, tokens=float(len(row)))
            loss_log.append(values)
        if progress and (step + 1) % 50 == 0:
            print(f"concept_express step {step + 1}: {loss_log[-1]['total']:.4f}")
    capture.set_tokens(None)
    restore_default_processors(components.unet)
    if not merged:  # a run shorter than merge_step still ends with one token per concept
        vectors = merge()
        final = {name: vector.cpu() for name, vector in zip(names, vectors)}
    else:
        final = {name: vector.detach().cpu() for name, vector in tokens.vectors().items()}
    merge_concept_embeddings(components.text_encoder)
    pixel_masks = F.interpolate(masks[None], size=source.image.shape[-2:], mode="nearest")[0]
    arrays = {ESTIMATED_MASK_KEY.format(index=k): pixel_masks[k].clone() for k in range(count)}
    arrays.update({"source_image": source.image.detach().cpu(), "source_masks": pixel_masks.clone(),
                   "features": features.clone()})
    return LearnedConcept(
        method="concept_express", preset=preset, tokens=names, object_word=source.object_word, vectors=final,
        model_id=components.model_id, weights_hash=components.weights_hash, config={**asdict(config), "seed": seed},
        loss_log=loss_log, arrays=arrays,
        extras={"seconds": round(time.perf_counter() - started, 3), "concepts_found": count},
    )


FIELD_SOURCES = {
    "steps": "haoosz/ConceptExpress scripts/train.sh L6: --phase1_train_steps 500",
    "lr": "haoosz/ConceptExpress scripts/train.sh L11: --initial_learning_rate 5e-4",
    "weight_decay": f"{CODE} L335 (--adam_weight_decay 1e-2), L952 (AdamW)",
    "lambda_attention": "haoosz/ConceptExpress scripts/train.sh L15: --lambda_attention 1e-5",
    "weight_contrast": "haoosz/ConceptExpress scripts/train.sh L13: --weight_contrast 1e-3",
    "temperature": "haoosz/ConceptExpress scripts/train.sh L14: --temperature 0.07",
    "split_tokens": "haoosz/ConceptExpress scripts/train.sh L12: --num_split_tokens 5",
    "merge_step": "haoosz/ConceptExpress scripts/train.sh L5: --merge_step 100",
    "p_flip": f"{CODE} L674, L710 (DreamBoothDataset flip_p 0.5, the only augmentation)",
    "sinkhorn_epsilon": "haoosz/ConceptExpress ptp_utils.py L707-725 (wasser_loss: SinkhornOT(..., 1e-3, 200))",
    "sinkhorn_iterations": "haoosz/ConceptExpress ptp_utils.py L707-725 (wasser_loss: SinkhornOT(..., 1e-3, 200))",
    "prompt": f"{CODE} L865: 'a photo of ' + ' and '.join(tokens)",
    "vocabulary_offset": f"{CODE} L894-896: new rows = rows [-3N:-2N] of the resized vocabulary, N = --num_of_assets 50",
    "pre_cluster_floor": f"{CODE} L1703-1706: the first FINCH partition with ≥ 10 clusters and < 10 next",
    "saliency_threshold": f"{CODE} L1736, L1743: compute_score(mask, eot_attn_mask) > 1.0",
    "attention_heads": "haoosz/ConceptExpress ptp_utils.py L137-140: the store keeps attn[h // 2:] (batch 1: the "
                       "last half of the heads)",
    "max_grad_norm": f"{CODE} L203-207 (--no_train_text_encoder is store_false: the text encoder trains), L344 "
                     "(--max_grad_norm 1.0), L1458-1467 (its parameters, the token rows among them, are clipped)",
}


class ConceptExpress(Method):
    name = "concept_express"
    description = "Unsupervised: K concepts found by self-attention clustering, split/merged tokens, masked + OT + SupCon"
    trains = "token embeddings only (K found from the image; 5 split tokens per concept until step 100)"
    base_config = ConceptExpressConfig()
    declared_settings = {"default": tuple(
        Setting(f"learn.{f.name}", getattr(ConceptExpressConfig(), f.name), FIELD_SOURCES[f.name])
        for f in fields(ConceptExpressConfig) if f.name in FIELD_SOURCES)}
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    estimates_masks = True

    def preset_terms(self, preset: str | None = None) -> Mapping[str, Any]:
        return {}  # a fixed objective: no loss terms for a suite's loss_weights to change

    sources = {
        "steps 500, lr 5e-4": f"{CODE}; scripts/train.sh (--phase1_train_steps 500 --initial_learning_rate 5e-4)",
        "AdamW, weight decay 1e-2": f"{CODE} (torch.optim.AdamW, --adam_weight_decay 1e-2)",
        "locate at t = 0, un-noised latents, empty prompt, every self-attention layer": f"{CODE} L1179-1227, L1649-1676",
        "FINCH pre-clustering (symmetric KL) at ≥ 10 clusters, merge under its threshold between touching masks":
            f"{CODE} L1689-1790; clustering/finch.py L56-61, L207 (threshold max(orig_dist · adj), mutual neighbours "
            "twice); ptp_utils.get_connect",
        "background: end-of-text cross-attention saliency score ≤ 1": f"{CODE} L1720-1745; ptp_utils.compute_score",
        "tokens from vocabulary rows (random init)": f"{CODE} L891-897",
        "5 split tokens per concept, merged (mean) at step 100": f"{CODE} L1233-1253; scripts/train.sh",
        "joint prompt 'a photo of <c1> and <c2> …' after the merge": f"{CODE} L654-660, L865",
        "λ_att 1e-5 Wasserstein (Sinkhorn ε 1e-3, 200 iterations)": f"{CODE} L1395-1425; ptp_utils.wasser_loss; emd/emd.py",
        "SupCon 1e-3, T 0.07 while split": f"{CODE} L1433-1449; utils/loss.py; scripts/train.sh",
        "augmentation: horizontal flip p 0.5 only": f"{CODE} DreamBoothDataset (L674-714)",
        "one optimizer step per prompt row": f"{CODE} L1299-1470 (optimizer.step inside the row loop)",
    }

    def learn_config(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> ConceptExpressConfig:
        return self.base_config.merged(self.preset(preset).get("learn")).merged(overrides)

    def learn(self, components: SDComponents, source: ConceptSource, *, preset: str | None = None,
              overrides: Mapping[str, Any] | None = None, seed: int = 0, out_dir: str | Path | None = None,
              progress: bool = True) -> LearnedConcept:
        self.require("learn")
        config = self.resolve("learn", preset, overrides)
        concept = learn_concept_express(components, source, config, preset=preset or self.default_preset, seed=seed,
                                        progress=progress)
        if out_dir is not None:
            concept.save(out_dir)
        return concept
