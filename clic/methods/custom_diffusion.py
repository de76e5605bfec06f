"""Custom Diffusion (Kumari et al., CVPR 2023) as the CLiC paper compares with it.

A token plus the cross-attention K/V projections, the diffusion loss over the image region (a zoom-out's padding
excluded, as the reference dataset's mask does), AdamW with weight decay 1e-2 and gradient clipping 1.0 as the
reference script runs them, prompt
"an OBJECT with <v*> style", the same augmentations/prompt suffixes as CLiC (CLiC §4.2: applied to all
baselines for an equitable comparison); transfer and generation through CLiC's blended and two-stage loops.
Preset ``crossattn`` also trains Q/out (the reference code's ``--freeze_model crossattn``). The real-image
prior-preservation set of the original is not used: no class images can be fetched here, and CLiC's
comparison learns from one image.
"""
from __future__ import annotations

from ..learn import LearnConfig
from ..presets import Setting, preset_overrides
from .base import Method

REFERENCE = "diffusers examples/custom_diffusion/train_custom_diffusion.py"
CLIC = "CLiC paper (CVPR 2024)"
SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 500, f"{CLIC} §4.2: 500 steps for every method"),
    Setting("learn.lr", 1e-5, f"{CLIC} §4.2 / Custom Diffusion §4 (1e-5; README: --learning_rate 1e-5)"),
    Setting("learn.train_kv", True, "Custom Diffusion §3.1: the cross-attention K/V train"),
    Setting("learn.terms.region_diffusion", 1.0,
            f"{REFERENCE}: ((mse·mask).sum([1,2,3]) / mask.sum([1,2,3])).mean(), the zoom-out padding outside the mask "
            "(CustomDiffusionDataset.preprocess)"),
    Setting("learn.optimizer", "adamw", f"{REFERENCE}: torch.optim.AdamW over the embeddings and the attention layers"),
    Setting("learn.weight_decay", 1e-2, f"{REFERENCE}: --adam_weight_decay 1e-2"),
    Setting("learn.token_weight_decay", 1e-2, f"{REFERENCE}: the token embedding is in the same AdamW"),
    Setting("learn.max_grad_norm", 1.0, f"{REFERENCE}: --max_grad_norm 1.0"),
    Setting("learn.clip_token_grad", True, f"{REFERENCE}: clips text_encoder.parameters() + the attention layers"),
    Setting("learn.context_prompt", "an {object} with {tokens} style", f"{CLIC} §4.2 comparison protocol"),
    Setting("learn.augment.p_flip", 0.5, f"{CLIC} §4.2: CLiC's augmentations for all baselines"),
    Setting("learn.augment.p_zoom", 0.5, f"{CLIC} §4.2: CLiC's augmentations for all baselines"),
)


class CustomDiffusion(Method):
    name = "custom_diffusion"
    description = "Token + cross-attention K/V, plain diffusion loss"
    trains = "token embedding + cross-attention K/V (crossattn: + Q/out)"
    base_config = LearnConfig(
        terms={"region_diffusion": 1.0},
        context_prompt="an {object} with {tokens} style",
        train_kv=True,
        optimizer="adamw",
        weight_decay=1e-2,
        token_weight_decay=1e-2,
        max_grad_norm=1.0,
        clip_token_grad=True,
    )
    declared_settings = {
        "default": SETTINGS,
        "crossattn": SETTINGS + (Setting("learn.train_q_out", True, f"{REFERENCE} --freeze_model crossattn (Q/out train too)"),),
    }
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    sources = {setting.key: setting.source for setting in SETTINGS}
