"""Custom Diffusion (Kumari et al., CVPR 2023) as the CLiC paper compares with it (preset ``original``: its own
README recipe — 250 steps, batch 2, --scale_lr, crossattn_kv, the 'ktn' initialiser, hflip and rescale on every
draw; the real-image prior is off, nothing can be fetched).

A token plus the cross-attention K/V projections, the diffusion loss over the image region (a zoom-out's padding
excluded, as the reference dataset's mask does), AdamW with weight decay 1e-2 and gradient clipping 1.0 as the
reference script runs them, prompt
"an OBJECT with <v*> style", the same augmentations/prompt suffixes as CLiC (CLiC supplement B.2: applied to
all baselines); transfer and generation through CLiC's blended and two-stage loops.
Preset ``crossattn`` also trains Q/out (the reference code's ``--freeze_model crossattn``). The real-image
prior-preservation set of the original is not used: no class images can be fetched here, and CLiC's
comparison learns from one image.
"""

from __future__ import annotations

from ..learn import LearnConfig
from ..presets import Setting, preset_overrides
from .base import Method

REFERENCE = "diffusers examples/custom_diffusion/train_custom_diffusion.py"
README = "diffusers examples/custom_diffusion/README.md"
CLIC = "CLiC paper (CVPR 2024)"
CLIC_BUDGET = (
    f"{CLIC} §4 preamble ('In all of our experiments … 500 steps … Adam, learning rate 1e-5'), read as "
    "applying to the baselines (the paper's adaptation)"
)
_SCRIPT: tuple[Setting, ...] = (
    Setting(
        "learn.terms.region_diffusion",
        1.0,
        f"{REFERENCE} L1177-1178: ((mse·mask).sum([1,2,3]) / mask.sum([1,2,3])).mean(), the zoom-out padding "
        "outside the mask (CustomDiffusionDataset.preprocess)",
    ),
    Setting(
        "learn.optimizer",
        "adamw",
        f"{REFERENCE} L1007-1018: torch.optim.AdamW over the embeddings and the attention layers",
    ),
    Setting("learn.weight_decay", 1e-2, f"{REFERENCE} L540: --adam_weight_decay 1e-2"),
    Setting("learn.token_weight_decay", 1e-2, f"{REFERENCE} L1010-1017: the token embedding is in the same AdamW"),
    Setting("learn.max_grad_norm", 1.0, f"{REFERENCE} L542: --max_grad_norm 1.0"),
    Setting(
        "learn.clip_token_grad",
        True,
        f"{REFERENCE} L1207-1213: text_encoder.parameters() + the attention layers clipped",
    ),
)
SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 500, CLIC_BUDGET),
    Setting("learn.lr", 1e-5, f"{CLIC_BUDGET}; also {README} L76 (--learning_rate 1e-5, before --scale_lr)"),
    Setting("learn.train_kv", True, f"{CLIC} §4.2: the token and the cross-attention K/V train"),
    Setting("learn.context_prompt", "an {object} with {tokens} style", f"{CLIC} supplement B.2: the context prompt"),
    Setting("learn.augment.p_flip", 0.5, f"{CLIC} supplement B.2: the augmentations are used for every baseline"),
    Setting("learn.augment.p_zoom", 0.5, f"{CLIC} supplement B.2: the augmentations are used for every baseline"),
) + _SCRIPT
ORIGINAL_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 250, f"{README} L78: --max_train_steps 250"),
    Setting("learn.lr", 1e-5, f"{README} L76: --learning_rate 1e-5"),
    Setting(
        "learn.scale_lr",
        True,
        f"{README} L79 (--scale_lr); {REFERENCE} L989-994: lr × accumulation × batch × "
        "processes (= 2e-5 here; × 2 more only with prior preservation, which is off)",
    ),
    Setting(
        "learn.gradient_accumulation",
        2,
        f"{README} L75 (--train_batch_size 2): 2 accumulated single images (the project's choice to reach the batch)",
    ),
    Setting(
        "learn.prior",
        {},
        f"our choice: off — {README} L70-72 uses --with_prior_preservation --real_prior "
        "(200 retrieved real 'cat' images, weight 1), which cannot be fetched here",
    ),
    Setting("learn.train_kv", True, f"{REFERENCE} L517-522: --freeze_model crossattn_kv (default): K/V train"),
    Setting("learn.train_q_out", False, f"{REFERENCE} L517-522: crossattn_kv leaves Q/out frozen"),
    Setting(
        "learn.init_word",
        "ktn",
        f"{REFERENCE} L624 (--initializer_token 'ktn+pll+ucd'), L844-874 (one modifier token takes the first)",
    ),
    Setting(
        "learn.context_prompt",
        "photo of a {tokens} {object}",
        f"{README} L73: --instance_prompt 'photo of a <new1> cat'",
    ),
    Setting("learn.augment.p_flip", 0.5, f"{README} L79 (--hflip); {REFERENCE} L224: RandomHorizontalFlip(0.5)"),
    Setting(
        "learn.augment.p_zoom",
        1.0,
        f"{REFERENCE} L188, L270-275: the rescale runs on every draw (0.66 out / "
        "0.34 in there; the in/out split stays 0.5 here: our choice)",
    ),
    Setting("learn.augment.p_jitter", 0.0, f"{REFERENCE} L172-281 (CustomDiffusionDataset): no colour jitter"),
    Setting("learn.augment.p_grayscale", 0.0, f"{REFERENCE} L172-281 (CustomDiffusionDataset): no grayscale"),
) + _SCRIPT


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
        "crossattn": SETTINGS
        + (Setting("learn.train_q_out", True, f"{REFERENCE} L517-522: --freeze_model crossattn (Q/out train too)"),),
        "original": ORIGINAL_SETTINGS,
    }
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    sources = {setting.key: setting.source for setting in SETTINGS}
