"""Textual Inversion (Gal et al., ICLR 2023): only the token embedding trains, plain diffusion loss.

Preset ``default`` is the CLiC paper's adaptation: its one budget (500 steps, Adam, lr 1e-5, §4 preamble) and
its prompt and augmentations (supplement B.2). Preset ``original`` is diffusers' ``examples/textual_inversion``
README recipe (AdamW, lr 5e-4, weight decay 1e-2 on the embedding, 3000 optimizer steps, gradient accumulation 4
with ``--scale_lr``: 5e-4 × 4 = 2e-3 on gradients averaged over 4 images, a horizontal flip with probability 0.5).
"""

from __future__ import annotations

from ..learn import LearnConfig
from ..presets import Setting, preset_overrides
from .base import Method

README = "diffusers examples/textual_inversion/README.md"
SCRIPT = "diffusers examples/textual_inversion/textual_inversion.py"
CLIC = "CLiC paper (CVPR 2024)"
CLIC_BUDGET = (
    f"{CLIC} §4 preamble ('In all of our experiments … 500 steps … Adam, learning rate 1e-5'), read as "
    "applying to the baselines (the paper's adaptation)"
)
_SHARED: tuple[Setting, ...] = (
    Setting("learn.train_kv", False, "Textual Inversion (Gal et al., ICLR 2023) §3: only the embedding trains"),
    Setting("learn.terms.diffusion", 1.0, f"{SCRIPT} L902: F.mse_loss(model_pred, target)"),
)
SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 500, CLIC_BUDGET),
    Setting("learn.lr", 1e-5, CLIC_BUDGET),
    Setting("learn.optimizer", "adam", CLIC_BUDGET),
    Setting("learn.token_weight_decay", 0.0, f"{CLIC_BUDGET}: Adam, no weight decay"),
    Setting("learn.gradient_accumulation", 1, f"{CLIC_BUDGET}: one image per step"),
    Setting("learn.scale_lr", False, f"{CLIC_BUDGET}: the learning rate as stated"),
    Setting("learn.context_prompt", "A {object} with {tokens} style", f"{CLIC} supplement B.2: the context prompt"),
    Setting("learn.augment.p_flip", 0.5, f"{CLIC} supplement B.2: the augmentations are used for every baseline"),
    Setting("learn.augment.p_zoom", 0.5, f"{CLIC} supplement B.2: the augmentations are used for every baseline"),
) + _SHARED
ORIGINAL_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 3000, f"{README} L78: --max_train_steps 3000 (optimizer steps)"),
    Setting("learn.lr", 5e-4, f"{README} L79: --learning_rate 5.0e-04"),
    Setting("learn.gradient_accumulation", 4, f"{README} L76-77: --train_batch_size 1 --gradient_accumulation_steps 4"),
    Setting(
        "learn.scale_lr",
        True,
        f"{README} L80 (--scale_lr); {SCRIPT} L735-738: lr × accumulation × batch × processes = 2e-3",
    ),
    Setting("learn.optimizer", "adamw", f"{SCRIPT} L741: torch.optim.AdamW"),
    Setting("learn.token_weight_decay", 1e-2, f"{SCRIPT} L330: --adam_weight_decay 1e-2"),
    Setting("learn.max_grad_norm", 0.0, f"{SCRIPT} L880-920 (the training step): no gradient clipping"),
    Setting(
        "learn.context_prompt",
        "a photo of a {tokens}",
        f"{SCRIPT} L454-455: imagenet_templates_small's first "
        "template (the script draws one of 27 per image: our "
        "choice to keep the first)",
    ),
    Setting("learn.augment.p_flip", 0.5, f"{SCRIPT} L516, L545: RandomHorizontalFlip(flip_p 0.5)"),
    Setting("learn.augment.p_zoom", 0.0, f"{SCRIPT} L507-590 (TextualInversionDataset): no rescale"),
    Setting("learn.augment.p_jitter", 0.0, f"{SCRIPT} L507-590 (TextualInversionDataset): no colour jitter"),
    Setting("learn.augment.p_grayscale", 0.0, f"{SCRIPT} L507-590 (TextualInversionDataset): no grayscale"),
) + _SHARED


class TextualInversion(Method):
    name = "textual_inversion"
    description = "Token embedding only, plain diffusion loss"
    trains = "token embedding"
    base_config = LearnConfig(terms={"diffusion": 1.0}, train_kv=False)
    declared_settings = {"default": SETTINGS, "original": ORIGINAL_SETTINGS}
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    sources = {setting.key: setting.source for setting in SETTINGS}
