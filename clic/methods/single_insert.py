"""SingleInsert (Wu et al., arXiv 2310.08094): an image encoder maps the source's foreground to the token.

Stage I trains an image encoder — a CLIP visual tower plus a linear projection to the text encoder's
embedding width — whose output *is* the placeholder token's embedding, with

    x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, or √ᾱ_t x_t − √(1−ᾱ_t) v̂ on a v-prediction model (clic.prediction)
    L_fg = mean(m_f ⊙ (x̂₀ − x₀)²)                                      (prompt with the token)
    L_bg = mean((1 − m_f) ⊙ (x̂₀ − x̄₀)²)   x̄₀: frozen model, class prompt, no gradient
    L_I  = L_fg + γ L_bg,  γ = 1

Stage II adds rank-4 LoRA adapters (peft, as diffusers' LoRA training scripts install them) to the UNet
and the text encoder and keeps training the encoder with

    L_sm = mean((x̂₀(adapted, class prompt) − x̂₀(frozen, class prompt))²)
    L_II = L_fg + γ L_bg + η L_sm,  γ = η = 1

(x̄₀ of L_bg and the frozen x̂₀ of L_sm are the same prediction: the adapters disabled, class prompt).
Every loss is a mean over latent elements, as :mod:`clic.losses`; m_f is the source mask area-resized to
the latents. The terms are registered (``si_fg``, ``si_bg``, ``si_sm``) so a suite's ``loss_weights``
ablates them like any other term.

The concept is a :class:`~clic.concept.LearnedConcept`: the encoder's output for the source is the token
vector (``learned_embeds-*.safetensors``, loadable by ``load_textual_inversion``); the LoRA weights are
written as ``pytorch_lora_weights.safetensors`` (``pipeline.load_lora_weights(folder)``) and kept, under
the same keys prefixed ``lora/``, in the concept's ``arrays`` so :meth:`SingleInsert.transfer` and
:meth:`SingleInsert.generate` install them on fresh components before the shared loops run. The encoder
itself is not saved: once the token is computed, inference does not need it.

The encoder: ``encoder_model = "auto"`` builds a tiny seeded ViT for the ``tiny`` preset; a real model
needs an open_clip architecture (``encoder_model``) and a local checkpoint (``encoder_pretrained``) —
nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..components import SDComponents
from ..concept import LearnedConcept
from ..learn import ConceptSource
from ..presets import Setting, preset_overrides, replaced
from .base import Method
from .single_insert_learn import StageInfo, learn_single_insert
from .single_insert_model import (
    ADAPTER,
    LORA_FILE,
    LORA_PREFIX,
    TINY_ENCODER,
    TINY_ENCODER_SEED,
    ConceptImageEncoder,
    SingleInsertConfig,
    add_lora,
    background_loss,
    build_visual_tower,
    foreground_loss,
    install_lora,
    lora_parameters,
    lora_state_dict,
    save_lora,
    semantic_loss,
)

__all__ = [  # the method's parts live in single_insert_model / single_insert_learn; imported from here as before
    "ADAPTER",
    "LORA_FILE",
    "LORA_PREFIX",
    "TINY_ENCODER",
    "TINY_ENCODER_SEED",
    "ConceptImageEncoder",
    "SingleInsert",
    "SingleInsertConfig",
    "StageInfo",
    "add_lora",
    "background_loss",
    "build_visual_tower",
    "foreground_loss",
    "install_lora",
    "learn_single_insert",
    "lora_parameters",
    "lora_state_dict",
    "save_lora",
    "semantic_loss",
]


# ------------------------------------------------------------------------------------ the method
PAPER = "SingleInsert (Wu et al., arXiv 2310.08094)"
CODE = "JarrentWu1031/SingleInsert train.py"
PAPER_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.stage_one_steps", 50, f"{PAPER} §4.1: stage I 50 iterations"),
    Setting("learn.stage_one_lr", 1e-4, f"{PAPER} §4.1: stage I lr 1e-4"),
    Setting("learn.stage_one_batch_size", 16, f"{PAPER} §4.1: stage I batch 16"),
    Setting("learn.stage_two_steps", 100, f"{PAPER} §4.1: stage II 100 iterations"),
    Setting("learn.stage_two_lr", 5e-5, f"{PAPER} §4.1: stage II lr 5e-5"),
    Setting("learn.stage_two_batch_size", 4, f"{PAPER} §4.1: stage II batch 4"),
    Setting("learn.lora_rank", 4, f"{PAPER} §3.3 (rank-4 LoRA); {CODE} --rank 4"),
    Setting(
        "learn.terms",
        {"si_fg": 1.0, "si_bg": 1.0, "si_sm": 1.0},
        f"{PAPER} §3.2-3.3: L_fg + γ L_bg (+ η L_sm in stage II), γ = η = 1 ({CODE} --bg_weight 1 --sm_weight 1)",
    ),
    Setting(
        "learn.prompt", "{token} {object}", f"{PAPER} §3.2: '* CLASS' ({CODE}: ' '.join([placeholder, class_name]))"
    ),
    Setting(
        "learn.class_prompt",
        "{object}",
        f"{PAPER} §3.2 (x̄₀ from the class name); {CODE} L1001: class_prompt = args.class_name",
    ),
    Setting(
        "learn.encoder_model",
        "auto",
        f"{PAPER} §4.1: CLIP ViT-B/32 image encoder ({CODE}: VisionTransformer "
        "patch 32, width 768, 12 layers); 'auto' = ViT-B-32 on a real model, a tiny "
        "seeded ViT on the tiny one",
    ),
    Setting("learn.optimizer", "adam", "our choice: the paper names no optimizer"),
    Setting(
        "generate.stage_one_steps",
        5,
        "CLiC paper §4.1 (two-stage generation): the first 5 steps on the base model (adapters off)",
    ),
)
ONE_STAGE_SETTINGS: tuple[Setting, ...] = replaced(
    PAPER_SETTINGS,
    Setting("generate.stage_one_steps", 0, f"{PAPER} §4.1: generation with the adapted model at every step"),
    Setting(
        "generate.prompt",
        "a photo of {token} on an {object}",
        f"{PAPER} §4.1: the token in the generation prompt; the wording our choice",
    ),
)
OFFICIAL_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.stage_one_steps", 50, f"{CODE} L237: --s1_train_steps 50"),
    Setting("learn.stage_one_lr", 1e-4, f"{CODE} L286-290: --s1_learning_rate 1e-4"),
    Setting("learn.stage_one_batch_size", 4, f"{CODE} L231: --s1_train_batch_size 4"),
    Setting("learn.stage_two_steps", 50, f"{CODE} L240: --s2_train_steps 50 (README: 50 for both stages)"),
    Setting("learn.stage_two_lr", 5e-5, f"{CODE} L292-296: --s2_learning_rate 5e-5"),
    Setting("learn.stage_two_batch_size", 4, f"{CODE} L234: --s2_train_batch_size 4"),
    Setting("learn.lora_rank", 4, f"{CODE} L407-410: --rank 4"),
    Setting("learn.prompt", "{token} {object}", f"{CODE} L477: ' '.join([placeholder_token, class_name])"),
    Setting("learn.class_prompt", "{object}", f"{CODE} L1001: class_prompt = args.class_name"),
    Setting("learn.optimizer", "adamw", f"{CODE} L853: torch.optim.AdamW"),
    Setting("learn.weight_decay", 1e-2, f"{CODE} L335: --adam_weight_decay 1e-2"),
    Setting("learn.max_grad_norm", 1.0, f"{CODE} L337: --max_grad_norm 1.0"),
    Setting(
        "generate.stage_one_steps",
        5,
        "CLiC paper §4.1 (two-stage generation): the first 5 steps on the base model (adapters off)",
    ),
)


class SingleInsert(Method):
    name = "single_insert"
    description = "Image encoder -> token (foreground/background x̂₀ losses), then + LoRA with a semantic loss"
    trains = "stage I: CLIP image encoder + projection; stage II: + rank-4 LoRA on UNet and text encoder"
    tasks = frozenset({"learn", "transfer", "generate"})
    base_config = SingleInsertConfig()
    declared_settings = {"paper": PAPER_SETTINGS, "one-stage": ONE_STAGE_SETTINGS, "official-code": OFFICIAL_SETTINGS}
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "paper"
    sources = {setting.key: setting.source for setting in PAPER_SETTINGS}

    def learn_config(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> SingleInsertConfig:
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
        concept = learn_single_insert(
            components,
            source,
            config,
            preset=preset or self.default_preset,
            seed=seed,
            progress_every=10 if progress else 0,
        )
        if out_dir is not None:
            concept.save(out_dir)
            lora = {k[len(LORA_PREFIX) :]: v for k, v in concept.arrays.items() if k.startswith(LORA_PREFIX)}
            if lora:
                save_lora(lora, out_dir)
        return concept

    def transfer(
        self,
        components: SDComponents,
        concept: LearnedConcept,
        target_image: torch.Tensor,
        target_mask: torch.Tensor,
        object_word: str,
        **kwargs: Any,
    ):
        install_lora(components, concept)
        return super().transfer(components, concept, target_image, target_mask, object_word, **kwargs)

    def generate(self, components: SDComponents, concept: LearnedConcept, object_word: str, **kwargs: Any):
        install_lora(components, concept)
        return super().generate(components, concept, object_word, **kwargs)
