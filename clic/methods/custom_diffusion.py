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
from .base import Method


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
    presets = {
        "default": {},
        "crossattn": {"learn": {"train_q_out": True}},
    }
    default_preset = "default"
    sources = {
        "lr": "Custom Diffusion paper §4 / diffusers example (1e-5)",
        "steps": "CLiC §4.2 (500 steps for every method)",
        "train_kv": "Custom Diffusion §3.1 (K/V of cross-attention); crossattn preset: reference code --freeze_model crossattn",
        "prompt": "CLiC issue spec: 'an OBJECT with <v*> style'",
        "augmentations": "CLiC §4.2 (same as CLiC for all baselines)",
        "loss over the image region (zoom-out padding excluded)": "diffusers examples/custom_diffusion/"
            "train_custom_diffusion.py, CustomDiffusionDataset.preprocess (mask) and the training loop "
            "(((mse·mask).sum / mask.sum).mean())",
        "optimizer (AdamW, weight decay 1e-2 on tokens and K/V)": "train_custom_diffusion.py (--adam_weight_decay 1e-2, "
            "one AdamW over the embeddings and the attention layers)",
        "max_grad_norm 1.0 (tokens + K/V)": "train_custom_diffusion.py (--max_grad_norm 1.0; clips text_encoder "
            "parameters and the custom diffusion layers)",
    }
