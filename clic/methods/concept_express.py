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
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..attention import AttentionCapture, restore_default_processors
from ..components import SDComponents
from ..concept import LearnedConcept
from ..learn import ConceptSource, capture_resolution, encode_text, sample_latents, seed_everything, vae_moments
from ..optimizer_step import OptimizerStep, make_optimizer
from ..prediction import training_target
from ..presets import Setting, preset_overrides
from ..tokens import ConceptTokens, merge_concept_embeddings
from .base import Method
from .concept_express_locate import (
    CODE,
    ConceptExpressConfig,
    Partition,
    aggregate_self_attention,
    cluster_concepts,
    component_count,
    finch,
    locate_concepts,
    saliency_score,
    spatially_connected,
    symmetric_kl,
)

__all__ = [  # the config and the locating half live in concept_express_locate; imported from here as before
    "CODE",
    "ESTIMATED_MASK_KEY",
    "ConceptExpress",
    "ConceptExpressConfig",
    "Partition",
    "aggregate_self_attention",
    "cluster_concepts",
    "component_count",
    "finch",
    "grid_cost",
    "learn_concept_express",
    "locate_concepts",
    "saliency_score",
    "spatially_connected",
    "supervised_contrastive",
    "symmetric_kl",
    "wasserstein_alignment",
]

ESTIMATED_MASK_KEY = "estimated_mask_{index}"


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
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    grid = torch.stack([ys.flatten(), xs.flatten()], 1)
    return torch.cdist(grid, grid)


def wasserstein_alignment(
    target: torch.Tensor, attention: torch.Tensor, epsilon: float = 1e-3, iterations: int = 200
) -> torch.Tensor:
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
def learn_concept_express(
    components: SDComponents,
    source: ConceptSource,
    config: ConceptExpressConfig,
    *,
    preset: str = "default",
    seed: int = 0,
    progress: bool = False,
) -> LearnedConcept:
    config.validate()
    generator = seed_everything(seed)
    device = components.unet.device
    image = source.images[0].to(device)
    masks, features = locate_concepts(components, image, config)
    if masks.shape[0] == 0:
        raise ValueError("ConceptExpress found no salient concept in the source image")
    count, side = masks.shape[0], masks.shape[-1]
    names, split_names, init = _token_names(components, config, count)
    components.freeze()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, split_names, init_vectors=init)
    capture = AttentionCapture(components.unet, "up+down", train_kv=False)
    capture.same_resolution_only = True
    capture.buffer.heads = config.attention_heads
    resolution = capture_resolution(capture, components)
    moments = vae_moments(components, image[None])
    flipped_moments = vae_moments(components, image.flip(-1)[None])
    step = _token_step(tokens, config)
    feature_maps = features.reshape(count, side, side)
    merged = False
    loss_log: list[dict[str, float]] = []
    started = time.perf_counter()

    def merge() -> torch.Tensor:
        with torch.no_grad():
            vectors = tokens.parameter.detach().reshape(config.split_tokens, count, -1).mean(0)
        return vectors

    for step_index in range(config.steps):
        if step_index == config.merge_step and not merged:
            vectors = merge()
            tokens = ConceptTokens(components.tokenizer, components.text_encoder, names, init_vectors=list(vectors))
            step = _token_step(tokens, config)
            merged = True
        flip = float(torch.rand((), generator=generator)) < config.p_flip
        step_masks = masks.flip(-1) if flip else masks
        step_features = feature_maps.flip(-1) if flip else feature_maps
        concept_of = list(range(count)) if merged else [k % count for k in range(len(tokens.tokens))]
        rows = [[k] for k in range(len(tokens.tokens))] + ([list(range(count))] if merged else [])
        for row in rows:
            loss, values = _row_loss(
                components,
                capture,
                tokens,
                config,
                row,
                concept_of,
                merged,
                flipped_moments if flip else moments,
                step_masks,
                step_features,
                resolution,
                generator,
            )
            step(lambda _micro, loss=loss: loss, f"step {step_index}")
            values.update(total=float(loss.detach()), step=step_index, tokens=float(len(row)))
            loss_log.append(values)
        if progress and (step_index + 1) % 50 == 0:
            print(f"concept_express step {step_index + 1}: {loss_log[-1]['total']:.4f}")
    capture.set_tokens(None)
    restore_default_processors(components.unet)
    if not merged:  # a run shorter than merge_step still ends with one token per concept
        vectors = merge()
        final = {name: vector.cpu() for name, vector in zip(names, vectors)}
    else:
        final = {name: vector.detach().cpu() for name, vector in tokens.vectors().items()}
    merge_concept_embeddings(components.text_encoder)
    return _finished_concept(source, config, components, masks, features, names, final, loss_log, preset, seed, started)


def _token_names(
    components: SDComponents, config: ConceptExpressConfig, count: int
) -> tuple[list[str], list[str], list[torch.Tensor]]:
    """The concepts' token names, their split tokens (token i + j·K is split j of concept i: TokenManager.split_tokens)
    and the splits' initial vectors, taken from the end of the vocabulary (``vocabulary_offset``)."""
    names = [config.placeholder] if count == 1 else [config.placeholder.replace("*", f"{k + 1}*") for k in range(count)]
    split_names = [
        f"{name[:-1]}s{j}>" if name.endswith(">") else f"{name}s{j}"
        for j in range(config.split_tokens)
        for name in names
    ]  # token i + j·K is split j of concept i (TokenManager.split_tokens)
    vocabulary = components.text_encoder.get_input_embeddings().weight.detach()
    start = vocabulary.shape[0] - config.vocabulary_offset
    init = [vocabulary[(start + k) % vocabulary.shape[0]].clone() for k in range(len(split_names))]
    return names, split_names, init


def _finished_concept(
    source: ConceptSource,
    config: ConceptExpressConfig,
    components: SDComponents,
    masks: torch.Tensor,
    features: torch.Tensor,
    names: list[str],
    final: dict[str, torch.Tensor],
    loss_log: list[dict[str, float]],
    preset: str,
    seed: int,
    started: float,
) -> LearnedConcept:
    """The concept with one token per located concept, its estimated masks and the located features."""
    count = masks.shape[0]
    pixel_masks = F.interpolate(masks[None], size=source.image.shape[-2:], mode="nearest")[0]
    arrays = {ESTIMATED_MASK_KEY.format(index=k): pixel_masks[k].clone() for k in range(count)}
    arrays.update(
        {"source_image": source.image.detach().cpu(), "source_masks": pixel_masks.clone(), "features": features.clone()}
    )
    return LearnedConcept(
        method="concept_express",
        preset=preset,
        tokens=names,
        object_word=source.object_word,
        vectors=final,
        model_id=components.model_id,
        weights_hash=components.weights_hash,
        config={**asdict(config), "seed": seed},
        loss_log=loss_log,
        arrays=arrays,
        extras={"seconds": round(time.perf_counter() - started, 3), "concepts_found": count},
    )


def _token_step(tokens: ConceptTokens, config: ConceptExpressConfig) -> OptimizerStep:
    """AdamW over the token rows; train_text_encoder is True by default in the released script, so the token rows
    are what its clipping covers (the shared loop's optimiser step, clic.optimizer_step)."""
    optimizer = make_optimizer("adamw", [tokens.parameter], lr=config.lr, weight_decay=config.weight_decay)
    return OptimizerStep(optimizer, [tokens.parameter], config.max_grad_norm)


def _row_loss(
    components: SDComponents,
    capture: AttentionCapture,
    tokens: ConceptTokens,
    config: ConceptExpressConfig,
    row: list[int],
    concept_of: list[int],
    merged: bool,
    moments: torch.Tensor,
    step_masks: torch.Tensor,
    step_features: torch.Tensor,
    resolution: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One prompt row's loss: the masked diffusion loss, the Wasserstein alignment of its tokens' attention with
    their concepts' features and, before the merge, the tokens' supervised contrast."""
    device = components.unet.device
    latents = sample_latents(components, moments, generator)
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
    alignment = sum(
        wasserstein_alignment(
            targets[i, 0].to(device), attention[i], config.sinkhorn_epsilon, config.sinkhorn_iterations
        )
        for i in range(len(row))
    )
    loss = diffusion + config.lambda_attention * alignment
    values = {"masked_diffusion": float(diffusion.detach()), "wasserstein": float(alignment.detach())}
    if not merged:
        labels = torch.tensor(concept_of, device=device)
        contrast = supervised_contrastive(F.normalize(tokens.parameter, dim=-1), labels, config.temperature)
        loss = loss + config.weight_contrast * contrast
        values["supcon"] = float(contrast.detach())
    return loss, values


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
    description = (
        "Unsupervised: K concepts found by self-attention clustering, split/merged tokens, masked + OT + SupCon"
    )
    trains = "token embeddings only (K found from the image; 5 split tokens per concept until step 100)"
    base_config = ConceptExpressConfig()
    declared_settings = {
        "default": tuple(
            Setting(f"learn.{f.name}", getattr(ConceptExpressConfig(), f.name), FIELD_SOURCES[f.name])
            for f in fields(ConceptExpressConfig)
            if f.name in FIELD_SOURCES
        )
    }
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    estimates_masks = True

    def preset_terms(self, preset: str | None = None) -> Mapping[str, Any]:
        return {}  # a fixed objective: no loss terms for a suite's loss_weights to change

    sources = {
        "steps 500, lr 5e-4": f"{CODE}; scripts/train.sh (--phase1_train_steps 500 --initial_learning_rate 5e-4)",
        "AdamW, weight decay 1e-2": f"{CODE} (torch.optim.AdamW, --adam_weight_decay 1e-2)",
        "locate at t = 0, un-noised latents, empty prompt, every self-attention layer": f"{CODE} L1179-1227, L1649-1676",
        "FINCH pre-clustering (symmetric KL) at ≥ 10 clusters, merge under its threshold between touching masks": f"{CODE} L1689-1790; clustering/finch.py L56-61, L207 (threshold max(orig_dist · adj), mutual neighbours "
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

    def learn_config(
        self, preset: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> ConceptExpressConfig:
        return self.base_config.merged(self.preset(preset).get("learn")).merged(overrides)

    def learn(
        self,
        components: SDComponents,
        source: ConceptSource,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> LearnedConcept:
        self.require("learn")
        config = self.resolve("learn", preset, overrides)
        concept = learn_concept_express(
            components, source, config, preset=preset or self.default_preset, seed=seed, progress=progress
        )
        if out_dir is not None:
            concept.save(out_dir)
        return concept
