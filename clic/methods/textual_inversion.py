"""Textual Inversion (Gal et al., ICLR 2023): only the token embedding trains, plain diffusion loss.

Learning rate, steps and optimizer as in diffusers' ``examples/textual_inversion`` (AdamW, lr 5e-4,
weight decay 1e-2 on the embedding, 3000 steps). The prompt follows CLiC's comparison protocol.
"""
from __future__ import annotations

from ..learn import LearnConfig
from .base import Method


class TextualInversion(Method):
    name = "textual_inversion"
    description = "Token embedding only, plain diffusion loss"
    trains = "token embedding"
    base_config = LearnConfig(
        steps=3000,
        lr=5e-4,
        optimizer="adamw",
        token_weight_decay=1e-2,
        terms={"diffusion": 1.0},
        train_kv=False,
    )
    presets = {"default": {}}
    default_preset = "default"
    sources = {
        "lr": "diffusers examples/textual_inversion (--learning_rate 5e-04, no lr scaling)",
        "steps": "diffusers examples/textual_inversion (--max_train_steps 3000)",
        "optimizer": "diffusers examples/textual_inversion (AdamW, weight decay 1e-2)",
        "prompt": "CLiC §4.2 (same prompts and augmentations for all baselines)",
    }
