"""Break-A-Scene (Avrahami et al., SIGGRAPH Asia 2023) as the CLiC paper adapted it.

Masked diffusion loss over the union of the sampled masks + λ·cross-attention loss (token maps at the
16×16 layers of the up *and* down blocks, each token's map divided by its maximum, squared error to the
nearest-resized mask, *summed* over the sampled tokens as the reference ``train.py`` adds one ``F.mse_loss``
per token), in two phases: the tokens alone at lr 5e-4 (400 steps), then tokens + cross-attention weights at
2e-6 (400 steps), AdamW (weight decay 1e-2) and gradient clipping 1.0 as in ``train.py``, the token rows inside
the clipped norm in both phases (``--no_train_text_encoder`` is ``store_false``, so ``train_text_encoder`` is True
by default, L181-186, and the text encoder's parameters are clipped with the UNet's, L1233-1243). With several masks,
each step samples a random non-empty subset of the tokens ("union sampling"): the prompt names only those and
the masked loss covers the union of their masks.

Prior preservation (``learn.prior``, on in preset ``original`` as in ``train.py`` whose flag is
``--no_prior_preservation``): before training, the *base* model generates ``images`` class images from the
class prompt; each step adds ``weight`` × the plain diffusion loss on one of them with the class prompt.
Preset ``original``: phase 2 fine-tunes the whole UNet and the text encoder (heavier; the original recipe).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..components import SDComponents, sd_pipeline
from ..concept import LearnedConcept
from ..learn import (
    ConceptSource,
    LearnConfig,
    Phase,
    StepBatch,
    TrainState,
    encode_text,
    format_prompt,
    learn_concept,
    sample_latents,
    vae_moments,
)
from ..losses import StepTensors, resize_mask
from ..prediction import training_target
from ..presets import Setting, preset_overrides
from .base import CROSS_ATTENTION_MEMORY, GpuMemory, Method

LAMBDA_ATTENTION = 1e-2  # reference train.py: --lambda_attention 1e-2
PRIOR_DEFAULTS = {"weight": 1.0, "prompt": "a photo at the beach", "images": 100, "steps": 50, "guidance_scale": 7.5}


class UnionSampling:
    """The Break-A-Scene step; with class latents, also the prior-preservation row."""

    def __init__(self, class_moments: torch.Tensor | None = None, prior: Mapping[str, Any] | None = None) -> None:
        self.class_moments = class_moments  # (N, 8, h, w) posterior moments of the class images
        self.prior = dict(prior or {})

    def __call__(self, state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = state.tokens.tokens
        count = len(tokens)
        chosen = [0] if count == 1 else sorted(torch.randperm(count)[: int(torch.randint(1, count + 1, ()))].tolist())
        masks = batch.masks[chosen]  # (k, H, W)
        latent_size = batch.latents.shape[-2:]
        union = resize_mask(masks.amax(dim=0)[None, None], latent_size, mode="nearest")
        x_t = state.components.scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
        prompt = format_prompt(state.config.context_prompt, object_word, [tokens[k] for k in chosen]) + batch.suffix
        text, ids = encode_text(state.components, [prompt])
        needs_attention = "attention" in state.objective.needs
        state.capture.set_tokens(state.tokens.positions(ids, [prompt], chosen) if needs_attention else None)
        eps = state.components.unet(x_t, batch.timestep, encoder_hidden_states=text).sample
        step = StepTensors(
            noise=batch.noise,
            mask=union,
            eps_context=eps,
            target=training_target(state.components.scheduler, batch.latents, batch.noise, batch.timestep),
        )
        if needs_attention:
            attention = state.capture.mean_map(state.attention_resolution)
            step.attention = attention / attention.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
            step.attention_masks = masks[None]
        loss, values = state.objective(step)
        state.capture.clear()
        values["tokens_sampled"] = float(len(chosen))
        if self.class_moments is not None:
            prior_loss = self.prior_loss(state, object_word)
            values["prior"] = float(prior_loss.detach())
            loss = loss + float(self.prior["weight"]) * prior_loss
            values["total"] = float(loss.detach())
        return loss, values

    def prior_loss(self, state: TrainState, object_word: str) -> torch.Tensor:
        """mean((ε_θ(x_t^cls, c_cls, t') − ε')²) on a random class image, its own t' and ε' (train.py draws both per row)."""
        components = state.components
        index = int(torch.randint(self.class_moments.shape[0], ()))
        latents = sample_latents(
            components,
            self.class_moments[index : index + 1],
            torch.Generator().manual_seed(int(torch.randint(2**31 - 1, ()))),
        )
        timestep = torch.randint(0, components.scheduler.config.num_train_timesteps, (1,)).to(latents.device)
        noise = torch.randn_like(latents)
        x_t = components.scheduler.add_noise(latents, noise, timestep)
        text, _ = encode_text(components, [format_prompt(self.prior["prompt"], object_word, state.tokens.tokens)])
        state.capture.set_tokens(None)
        with state.capture.paused():
            eps = components.unet(x_t, timestep, encoder_hidden_states=text).sample
        return F.mse_loss(eps, training_target(components.scheduler, latents, noise, timestep))


def union_sampling_step(state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
    """The step without prior preservation."""
    return UnionSampling()(state, batch, object_word)


@torch.no_grad()
def class_image_moments(
    components: SDComponents, prompt: str, count: int, steps: int, guidance_scale: float, seed: int
) -> torch.Tensor:
    """VAE posterior moments (count, 8, h, w) of ``count`` images the *base* model generates from ``prompt``
    (diffusers' StableDiffusionPipeline, DDIM, as train.py samples its class images with the pipeline)."""
    pipeline = sd_pipeline(components)
    generator = torch.Generator().manual_seed(seed)
    images = pipeline(
        [prompt] * count,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=components.resolution,
        width=components.resolution,
        generator=generator,
        output_type="pt",
    ).images
    return vae_moments(components, images * 2 - 1)


TRAIN = "google/break-a-scene train.py"
_SHARED: tuple[Setting, ...] = (
    Setting(
        "learn.capture_layers", "up+down", f"{TRAIN} L1190-1192: aggregate_attention(res=16, from_where=('up', 'down'))"
    ),
    Setting("learn.same_resolution_maps", True, f"{TRAIN} L1190-1191, L1389-1400: only the 16×16 maps"),
    Setting(
        "learn.terms.masked_diffusion",
        1.0,
        f"{TRAIN} L1171-1182: F.mse_loss(pred·mask, target·mask), the union (max) of the masks",
    ),
    Setting(
        "learn.terms.att",
        {"weight": LAMBDA_ATTENTION, "resize": "nearest", "sum_tokens": True},
        f"{TRAIN} L403 (--lambda_attention 1e-2), L1184-1223: attn_loss += F.mse_loss(GT_mask, attn/attn.max()) per sampled token "
        "(a sum), nearest-interpolated masks",
    ),
    Setting(
        "learn.context_prompt",
        "a photo of a {object} with {tokens}",
        f"{TRAIN} L533 ('a photo of <asset>'), with the object word as in the CLiC paper §4.2",
    ),
    Setting("learn.optimizer", "adamw", f"{TRAIN} L852: torch.optim.AdamW"),
    Setting("learn.weight_decay", 1e-2, f"{TRAIN} L313: --adam_weight_decay 1e-2"),
    Setting("learn.token_weight_decay", 1e-2, f"{TRAIN} L852-862, L1061-1065: the embeddings are in the same AdamW"),
    Setting("learn.max_grad_norm", 1.0, f"{TRAIN} L322: --max_grad_norm 1.0"),
)
DEFAULT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "learn.phases",
        ({"steps": 400, "token_lr": 5e-4}, {"steps": 400, "token_lr": 2e-6, "attention_lr": 2e-6}),
        f"{TRAIN} L201-210 (--phase1_train_steps 400, --phase2_train_steps 400), L249-251 (--initial_learning_rate "
        "5e-4), L243-245 (--learning_rate 2e-6); CLiC paper §4.2 adaptation: phase 2 trains the cross-attention "
        "weights",
    ),
    Setting("learn.train_kv", True, "CLiC paper §4.2 adaptation (cross-attention weights instead of the whole UNet)"),
    Setting("learn.train_q_out", True, "CLiC paper §4.2 adaptation (all cross-attention projections)"),
    Setting(
        "learn.clip_token_grad",
        True,
        f"{TRAIN} L181-186 (train_text_encoder True by default: --no_train_text_encoder "
        "is store_false), L1233-1243 (unet + text_encoder parameters clipped)",
    ),
) + _SHARED
ORIGINAL_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "learn.phases",
        ({"steps": 400, "token_lr": 5e-4}, {"steps": 400, "token_lr": 2e-6, "unet_lr": 2e-6, "text_encoder_lr": 2e-6}),
        f"{TRAIN} L1043-1065: phase 2 fine-tunes the UNet and the text encoder (train_text_encoder, L181-186) at "
        "--learning_rate 2e-6 (L243-245), after L201-210's 400 phase-1 steps at 5e-4 (L249-251)",
    ),
    Setting("learn.train_kv", False, f"{TRAIN} L1050-1053: no separate attention copies (the whole UNet trains)"),
    Setting("learn.train_q_out", False, f"{TRAIN} L1050-1053: no separate attention copies (the whole UNet trains)"),
    Setting(
        "learn.clip_token_grad",
        True,
        f"{TRAIN} L181-186, L1233-1243: the text encoder trains, its parameters are clipped with the UNet's",
    ),
    Setting(
        "learn.prior",
        dict(PRIOR_DEFAULTS),
        f"{TRAIN} L134 (prior preservation on by default: --no_prior_preservation turns it off), L140 "
        "(--prior_loss_weight 1), L146-148 (--num_class_images 100), L128-130 (--class_prompt 'a photo at the "
        "beach'); class images from the base model (50 DDIM steps, guidance 7.5: the pipeline's defaults)",
    ),
) + _SHARED


class BreakAScene(Method):
    name = "break_a_scene"
    description = "Masked diffusion + attention loss, two phases (tokens, then tokens + cross-attention)"
    trains = "token embeddings, then + cross-attention K/V/Q/out (original: + whole UNet and text encoder)"
    base_config = LearnConfig(
        phases=(Phase(steps=400, token_lr=5e-4), Phase(steps=400, token_lr=2e-6, attention_lr=2e-6)),
        train_kv=True,
        train_q_out=True,
        capture_layers="up+down",
        terms={"masked_diffusion": 1.0, "att": {"weight": LAMBDA_ATTENTION, "resize": "nearest", "sum_tokens": True}},
        context_prompt="a photo of a {object} with {tokens}",
        same_resolution_maps=True,
        optimizer="adamw",
        weight_decay=1e-2,
        token_weight_decay=1e-2,
        max_grad_norm=1.0,
        clip_token_grad=True,  # train.py L1233-1243: train_text_encoder is True by default, the token rows are clipped
    )
    declared_settings = {"default": DEFAULT_SETTINGS, "original": ORIGINAL_SETTINGS}
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    sources = {setting.key: setting.source for setting in ORIGINAL_SETTINGS}
    gpu_memory = {
        # tokens, then + cross-attention layers: CLiC's counted figures (the same layers train; batch of 2)
        "default": CROSS_ATTENTION_MEMORY,
        # the whole UNet (859.5 M parameters) and text encoder (123.1 M) train: a gradient and AdamW's two moments
        # each, 982.6 M × 4 B × 3 = 11.0 GiB, on top of the counted 2.84 GiB kept for backward: ≈ 17.8 GiB fp32
        "original": GpuMemory(
            11.0,
            2.84,
            "derived: SD 1.5 UNet + text encoder parameters x 4 B x (gradient + 2 "
            "AdamW moments); kept for backward as CLiC's counted 2.84 GiB",
        ),
    }

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
        prior = {**PRIOR_DEFAULTS, **dict(config.prior)} if float(config.prior.get("weight", 0) or 0) > 0 else None
        class_moments = None
        if prior is not None:
            prompt = format_prompt(prior["prompt"], source.object_word, ["<v*>"])
            class_moments = class_image_moments(
                components, prompt, int(prior["images"]), int(prior["steps"]), float(prior["guidance_scale"]), seed
            )
        return learn_concept(
            components,
            source,
            config,
            method=self.name,
            preset=preset or self.default_preset,
            seed=seed,
            step_fn=UnionSampling(class_moments, prior),
            out_dir=out_dir,
            progress=progress,
        )
