"""ConceptExpress (Hao et al., ECCV 2024): unsupervised concept extraction from one image.

1. Locate (no mask, no token): the source latents are noised at a few timesteps and denoised once with the
   empty prompt; the UNet's self-attention maps (up blocks, averaged over layers and timesteps) give every
   latent pixel a distribution over the image. Pixels are *pre-clustered* (seeded k-means++ on the square
   roots of those rows — Hellinger geometry, the natural one for distributions) into ``pre_clusters``
   groups, which are *merged* agglomeratively (Jensen–Shannon divergence between the groups' mean
   attention, size-weighted) until K + 1 remain. The *background* is the merged cluster that covers the
   largest share of the image border (our rule: the paper ranks clusters by saliency; a border rule needs
   no cross-attention and matches object-centred sources). The other K clusters are the concepts.
2. Learn: one token per concept ("token lookup table": ``<c1*>``, ``<c2*>``, …), concept-wise masked
   denoising — each step denoises x_t once per concept with "a photo of <ck*>" and masks the error with
   that concept's mask (one batched UNet pass). Only the token embeddings train.

K is the number of masks the source carries (1 for one user mask: the user mask itself is ignored — only
its count is used — so the masks this method finds can be scored against it). The concept keeps its masks
in ``arrays`` as ``estimated_mask_<k>`` (source resolution, {0, 1}).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..concept import LearnedConcept
from ..learn import (ConceptSource, LearnConfig, StepBatch, TrainState, encode_text, format_prompt, learn_concept,
                     seed_everything, vae_moments)
from ..losses import StepTensors, resize_mask
from ..models import SDComponents
from ..selfattention import recording_self_attention
from .base import Method
from ..settings import reject_unknown_keys

ESTIMATED_MASK_KEY = "estimated_mask_{index}"


@dataclass(frozen=True)
class LocateSettings:
    timesteps: tuple[int, ...] = (100, 300, 500)  # our choice: three noise levels, mid-to-low noise
    layers: str = "up"  # self-attention layers read (ConceptExpress §3.2 uses the UNet's self-attention)
    max_side: int = 16  # only layers at most this many latent pixels wide (SD 1.x at 512 px: the 16² layers)
    resolution: int | None = None  # clustering grid side; None: the finest recorded layer's side
    pre_clusters: int = 10  # our choice (the paper pre-clusters into more groups than concepts, then merges)
    kmeans_iterations: int = 50

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LocateSettings":
        reject_unknown_keys(cls, data, "ConceptExpress locate setting(s)")
        data = dict(data)
        if "timesteps" in data:
            data["timesteps"] = tuple(int(t) for t in data["timesteps"])
        return cls(**data)


# ------------------------------------------------------------------------------------ clustering
def kmeans(points: torch.Tensor, count: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Labels (N,) of seeded k-means++ / Lloyd on points (N, D) (Euclidean)."""
    count = min(count, points.shape[0])
    centres = points[torch.randint(points.shape[0], (1,), generator=generator)]
    for _ in range(1, count):  # k-means++: next centre drawn ∝ squared distance to the nearest one
        nearest = torch.cdist(points, centres).amin(dim=1).square()
        if float(nearest.sum()) <= 0:
            break
        centres = torch.cat([centres, points[torch.multinomial(nearest / nearest.sum(), 1, generator=generator)]])
    labels = torch.cdist(points, centres).argmin(dim=1)
    for _ in range(iterations):
        centres = torch.stack([points[labels == k].mean(0) if (labels == k).any() else centres[k] for k in range(len(centres))])
        new = torch.cdist(points, centres).argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    return torch.unique(labels, return_inverse=True)[1]  # consecutive ids


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence between distributions along the last axis."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def merge_clusters(rows: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Agglomeration of the labelled groups of ``rows`` (N, P distributions) down to ``count`` groups.

    The cost of merging groups a and b is JS(mean_a, mean_b) · n_a·n_b/(n_a + n_b) (Ward-style size
    weighting): a stray pre-cluster of a few pixels joins its nearest group instead of surviving as a
    "concept" of one pixel while two real parts merge."""
    groups = [torch.nonzero(labels == k).squeeze(1) for k in range(int(labels.max()) + 1)]
    while len(groups) > count:
        means = torch.stack([rows[g].mean(0) for g in groups])
        sizes = torch.tensor([float(len(g)) for g in groups])
        distance = js_divergence(means[:, None], means[None]) * (sizes[:, None] * sizes[None]) / (sizes[:, None] + sizes[None])
        distance.fill_diagonal_(float("inf"))
        a, b = divmod(int(distance.argmin()), len(groups))
        a, b = min(a, b), max(a, b)
        groups[a] = torch.cat([groups[a], groups[b]])
        del groups[b]
    merged = torch.empty_like(labels)
    for k, group in enumerate(groups):
        merged[group] = k
    return merged


def border_share(label_grid: torch.Tensor, label: int) -> float:
    """Share of the border pixels of a (r, r) label grid that carry ``label``."""
    border = torch.cat([label_grid[0], label_grid[-1], label_grid[1:-1, 0], label_grid[1:-1, -1]])
    return float((border == label).float().mean())


def cluster_concepts(attention: torch.Tensor, concepts: int, pre_clusters: int, iterations: int = 50,
                     seed: int = 0) -> torch.Tensor:
    """Concept masks (K, r, r) in {0, 1} from self-attention rows (r², r²): pre-cluster, merge to K + 1,
    drop the cluster covering most of the border (the background), order the rest by size (largest first)."""
    pixels = attention.shape[0]
    side = int(round(pixels ** 0.5))
    rows = attention / attention.sum(dim=1, keepdim=True).clamp_min(1e-12)
    generator = torch.Generator().manual_seed(seed)
    labels = kmeans(rows.sqrt(), max(pre_clusters, concepts + 1), iterations, generator)
    merged = merge_clusters(rows, labels, concepts + 1).reshape(side, side)
    count = int(merged.max()) + 1
    background = max(range(count), key=lambda k: border_share(merged, k))
    kept = sorted((k for k in range(count) if k != background), key=lambda k: -int((merged == k).sum()))
    masks = torch.stack([(merged == k).float() for k in kept]) if kept else torch.zeros(0, side, side)
    if masks.shape[0] < concepts:  # fewer clusters than concepts (a tiny grid): the foreground is shared
        foreground = (merged != background).float()
        if foreground.sum() == 0:  # a single cluster: no separable concept, the whole image is the region
            foreground = torch.ones_like(foreground)
        masks = torch.cat([masks, foreground.expand(concepts - masks.shape[0], -1, -1)])
    return masks


@torch.no_grad()
def locate_concepts(components: SDComponents, image: torch.Tensor, concepts: int, settings: LocateSettings,
                    seed: int = 0) -> torch.Tensor:
    """Concept masks (K, R, R) in {0, 1} of ``image`` ((3, R, R) in [-1, 1]) from UNet self-attention."""
    device = components.unet.device
    generator = torch.Generator().manual_seed(seed)
    latents = vae_moments(components, image[None]).chunk(2, dim=1)[0] * components.vae.config.scaling_factor
    timesteps = torch.tensor(settings.timesteps, dtype=torch.long, device=device)
    noise = torch.randn((len(timesteps), *latents.shape[1:]), generator=generator).to(device)
    noisy = components.scheduler.add_noise(latents.expand(len(timesteps), -1, -1, -1), noise, timesteps)
    text, _ = encode_text(components, [""] * len(timesteps))
    with recording_self_attention(components.unet, settings.layers, settings.max_side) as maps:
        components.unet(noisy, timesteps, encoder_hidden_states=text)
    sides = [int(round(total.shape[0] ** 0.5)) for total in maps.sums.values()]
    resolution = settings.resolution or max(sides)
    masks = cluster_concepts(maps.mean(resolution), concepts, settings.pre_clusters, settings.kmeans_iterations, seed)
    return F.interpolate(masks[None], size=image.shape[-2:], mode="nearest")[0]


# ------------------------------------------------------------------------------------ learning
def concept_wise_step(state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
    """Concept-wise masked denoising: one row per concept k, "a photo of <ck*>", error masked by M_k."""
    tokens = state.tokens.tokens
    count = len(tokens)
    x_t = state.components.scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    prompts = [format_prompt(state.config.context_prompt, object_word, [token]) + batch.suffix for token in tokens]
    text, _ = encode_text(state.components, prompts)
    eps = state.components.unet(x_t.expand(count, -1, -1, -1), batch.timestep.expand(count),
                                encoder_hidden_states=text).sample
    masks = resize_mask(batch.masks[:, None], batch.latents.shape[-2:], mode="nearest")  # (K, 1, h, w)
    loss, values = state.objective(StepTensors(noise=batch.noise, mask=masks, eps_context=eps))
    return loss, values


class ConceptExpress(Method):
    name = "concept_express"
    description = "Unsupervised: concepts located by clustering self-attention, one token each, concept-wise masked denoising"
    trains = "token embeddings only (one per located concept)"
    base_config = LearnConfig(
        steps=500,
        lr=5e-4,
        train_kv=False,
        capture_layers="",
        terms={"masked_diffusion": 1.0},
        context_prompt="a photo of {token}",
        placeholder="<c*>",
    )
    presets = {"default": {}}
    default_preset = "default"
    estimates_masks = True
    sources = {
        "locate": "ConceptExpress §3.2 (self-attention clustering: pre-clustering, merging; background excluded)",
        "distance": "ConceptExpress §3.2 (KL-type divergence between attention distributions); we use JS (symmetric)",
        "background": "our rule: the merged cluster covering most of the image border",
        "pre_clusters, timesteps": "our choice (the paper's exact values are not reproduced here)",
        "objective": "ConceptExpress §3.3 (concept-wise masked denoising, token lookup table)",
        "trained parameters": "ConceptExpress §3.3 (token embeddings only; the diffusion model stays frozen)",
        "steps, lr": "our choice, Textual-Inversion-like (500 steps, 5e-4)",
    }

    def learn(self, components: SDComponents, source: ConceptSource, *, preset: str | None = None,
              overrides: Mapping[str, Any] | None = None, seed: int = 0, out_dir: str | Path | None = None,
              progress: bool = True) -> LearnedConcept:
        self.require("learn")
        config = self.learn_config(preset, overrides)
        settings = LocateSettings.from_dict(self.task_settings("locate", preset))
        seed_everything(seed)
        located = torch.stack([locate_concepts(components, image, source.n_tokens, settings, seed)
                               for image in source.images])  # (K_images, n, R, R)
        estimated = ConceptSource(source.image, located if source.image.dim() == 4 else located[0].clone(), source.object_word)
        concept = learn_concept(components, estimated, config, method=self.name, preset=preset or self.default_preset,
                                seed=seed, step_fn=concept_wise_step, progress=progress)
        for index, mask in enumerate(located[0]):
            concept.arrays[ESTIMATED_MASK_KEY.format(index=index)] = mask.cpu().clone()  # safetensors refuses shared views
        concept.extras["locate"] = {f.name: getattr(settings, f.name) for f in fields(settings)}
        if out_dir is not None:
            concept.save(out_dir)
        return concept
