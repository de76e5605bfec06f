"""Textual Inversion (Gal et al., ICLR 2023): only the token embedding trains, plain diffusion loss.

Learning rate, steps and optimizer as diffusers' ``examples/textual_inversion`` README runs it (AdamW, lr 5e-4,
weight decay 1e-2 on the embedding, 3000 optimizer steps, gradient accumulation 4 with ``--scale_lr``, so the
effective learning rate is 5e-4 × 4 = 2e-3 on gradients averaged over 4 images). The prompt follows CLiC's
comparison protocol.
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
        gradient_accumulation=4,
        scale_lr=True,
    )
    presets = {"default": {}}
    default_preset = "default"
    sources = {
        "lr": "diffusers examples/textual_inversion/README.md (--learning_rate 5.0e-04 --scale_lr "
              "--gradient_accumulation_steps 4 --train_batch_size 1: effective 2e-3)",
        "gradient_accumulation 4, scale_lr": "diffusers examples/textual_inversion/README.md training command; "
                                             "textual_inversion.py scales lr by accumulation × batch × processes",
        "steps": "diffusers examples/textual_inversion (--max_train_steps 3000 optimizer steps)",
        "optimizer": "diffusers examples/textual_inversion (AdamW, weight decay 1e-2)",
        "prompt": "CLiC §4.2 (same prompts and augmentations for all baselines)",
    }
