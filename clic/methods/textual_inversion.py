"""Textual Inversion (Gal et al., ICLR 2023): only the token embedding trains, plain diffusion loss.

Learning rate, steps and optimizer as diffusers' ``examples/textual_inversion`` README runs it (AdamW, lr 5e-4,
weight decay 1e-2 on the embedding, 3000 optimizer steps, gradient accumulation 4 with ``--scale_lr``, so the
effective learning rate is 5e-4 × 4 = 2e-3 on gradients averaged over 4 images). The prompt follows CLiC's
comparison protocol.
"""
from __future__ import annotations

from ..learn import LearnConfig
from ..presets import Setting, preset_overrides
from .base import Method

README = "diffusers examples/textual_inversion/README.md"
SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 3000, f"{README}: --max_train_steps 3000 (optimizer steps)"),
    Setting("learn.lr", 5e-4, f"{README}: --learning_rate 5.0e-04"),
    Setting("learn.gradient_accumulation", 4, f"{README}: --gradient_accumulation_steps 4 (--train_batch_size 1)"),
    Setting("learn.scale_lr", True, f"{README}: --scale_lr; textual_inversion.py: lr × accumulation × batch × processes "
                                    "= 2e-3"),
    Setting("learn.optimizer", "adamw", "diffusers examples/textual_inversion/textual_inversion.py: torch.optim.AdamW"),
    Setting("learn.token_weight_decay", 1e-2, "textual_inversion.py: --adam_weight_decay 1e-2"),
    Setting("learn.train_kv", False, "Textual Inversion (Gal et al.): only the embedding trains"),
    Setting("learn.terms.diffusion", 1.0, "textual_inversion.py: F.mse_loss(model_pred, target)"),
    Setting("learn.context_prompt", "A {object} with {tokens} style", "CLiC §4.2: the same prompts for all baselines"),
)


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
    declared_settings = {"default": SETTINGS}
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    sources = {setting.key: setting.source for setting in SETTINGS}
