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

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..components import SDComponents
from ..concept import LearnedConcept
from ..learn import ConceptSource
from ..presets import Setting, preset_overrides
from .base import Method
from .concept_express_learn import ESTIMATED_MASK_KEY, learn_concept_express
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
from .concept_express_losses import grid_cost, supervised_contrastive, wasserstein_alignment

__all__ = [  # the config, locating, losses and learning live in concept_express_*; imported from here as before
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
