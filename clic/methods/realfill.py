"""RealFill (Tang et al., 2023) as the CLiC paper adapted it: an inpainting UNet learns the concept.

The UNet takes 9 channels — noisy latents, the mask and the masked image's latents — as Stable Diffusion's
inpainting checkpoints do (``tiny`` maps to ``tiny-inpaint``; real runs name an SD inpainting folder).
Learning trains the token + the cross-attention K/V of the inpainting UNet on the source with RealFill's random
hole masks (:func:`make_mask`, the reference ``train_realfill.py``'s distribution) and a loss weighted by the
source mask — the reference weights its loss by a per-pixel map (``weightings``), and in CLiC's protocol the
region to learn is the one the source mask delineates. Transfer inpaints the target mask with the token
from pure noise, classifier-free guided, and puts the target's own latents back outside the mask.
Two-stage generation does not apply to an inpainting model: ``generate`` is unsupported.

Preset ``original`` is the reference recipe itself: rank-16 LoRA (α 27) on the UNet's and the text encoder's
attention projections through peft, AdamW at 2e-4 (UNet) / 4e-5 (text encoder), weight decay 1e-2, clipping 1.0,
the fixed prompt "a photo of sks" (the token starts at "sks" and does not train), 2000 steps of batch 16. The
adapters are saved in the concept and taken out of the model after learning (:mod:`clic.lora`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..components import SDComponents, ddim_scheduler
from ..concept import LearnedConcept
from ..learn import LearnConfig, StepBatch, TrainState, capture_resolution, encode_text, format_prompt, vae_moments
from ..losses import StepTensors, resize_mask
from ..prediction import training_target
from ..presets import Setting, preset_overrides
from ..transfer import TransferResult, TransferSettings, decode, ensure_concept, latent_region, summarize_attention
from .base import Method

# diffusers examples/research_projects/realfill/train_realfill.py, make_mask and RealFillDataset.__getitem__
HOLE_COUNT_HIGH = 30  # np.random.randint(1, times=30): 1–29 rectangles
HOLE_MIN, HOLE_MAX, HOLE_MARGIN = 0.03, 0.25, 0.01  # sides and margin as shares of the resolution
P_INVERT = 0.5  # the whole mask inverted with probability 0.5
P_FULL_HOLE = 0.1  # the dataset's "masks = ones" branch: the whole image is the hole
P_EMPTY_PROMPT = 0.1  # the dataset's prompt dropout ("" with probability 0.1)


REFERENCE = "diffusers examples/research_projects/realfill/train_realfill.py"
README = "diffusers examples/research_projects/realfill/README.md"
CLIC = "CLiC paper (CVPR 2024)"
CLIC_BUDGET = (
    f"{CLIC} §4 preamble ('In all of our experiments … 500 steps … Adam, learning rate 1e-5'), read as "
    "applying to the baselines (the paper's adaptation)"
)
_SHARED: tuple[Setting, ...] = (
    Setting(
        "learn.terms.masked_diffusion",
        1.0,
        f"{REFERENCE} L879: (weightings * mse).mean(); the weighting is "
        "the concept's source mask (CLiC's protocol learns the masked region)",
    ),
    Setting(
        "inpaint.hole_masks",
        "make_mask",
        f"{REFERENCE} L51 make_mask: 1–29 rectangles, sides 3–25 %, margin "
        "1 %, inverted w.p. 0.5; whole image w.p. 0.1 (L483-486)",
    ),
    Setting("inpaint.empty_prompt_probability", P_EMPTY_PROMPT, f"{REFERENCE} L490: '' w.p. 0.1"),
)
SETTINGS: tuple[Setting, ...] = (
    Setting("learn.train_kv", True, f"{CLIC} §4.2 adaptation: token + cross-attention K/V of the inpainting UNet"),
    Setting("learn.steps", 500, CLIC_BUDGET),
    Setting("learn.lr", 1e-5, CLIC_BUDGET),
) + _SHARED
LORA = {
    "rank": 16,
    "alpha": 27,
    "dropout": 0.0,
    "unet_targets": ("to_k", "to_q", "to_v", "key", "query", "value"),
    "text_targets": ("k_proj", "q_proj", "v_proj"),
}
ORIGINAL_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "learn.lora",
        LORA,
        f"{REFERENCE} L389-406 (--lora_rank 16, --lora_alpha 27, --lora_dropout 0), "
        "L606-622 (UNet to_k/to_q/to_v/key/query/value, text encoder k/q/v_proj, peft)",
    ),
    Setting("learn.train_kv", False, f"{REFERENCE} L606-622: LoRA only, no separate attention copies"),
    Setting(
        "learn.phases",
        ({"steps": 2000, "token_lr": 0.0, "unet_lr": 2e-4, "text_encoder_lr": 4e-5},),
        f"{README} L60-64 (--unet_learning_rate 2e-4 --text_encoder_learning_rate 4e-5 --max_train_steps 2000, "
        f"constant schedule); {REFERENCE} L275-284 (the same defaults); the prompt's word is not trained",
    ),
    Setting(
        "learn.gradient_accumulation",
        16,
        f"{README} L58 (--train_batch_size 16): here 16 accumulated single "
        "images (the project's choice to reach the batch)",
    ),
    Setting("learn.scale_lr", False, f"{REFERENCE} L287-289 (--scale_lr off by default; the README does not set it)"),
    Setting("learn.optimizer", "adamw", f"{REFERENCE} L713-724 (torch.optim.AdamW, UNet and text encoder groups)"),
    Setting("learn.weight_decay", 1e-2, f"{REFERENCE} L316 (--adam_weight_decay 1e-2)"),
    Setting("learn.max_grad_norm", 1.0, f"{REFERENCE} L318, L883-885 (UNet + text encoder parameters clipped)"),
    Setting(
        "learn.clip_token_grad",
        False,
        f"{REFERENCE} L883-885: only the adapters have gradients there (the "
        "embedding is frozen by get_peft_model, L613, L622)",
    ),
    Setting("learn.context_prompt", "a photo of {tokens}", f"{REFERENCE} L450 (train_prompt 'a photo of sks')"),
    Setting("learn.init_word", "sks", f"{REFERENCE} L450: the prompt's rare word 'sks' (its embedding, untrained)"),
    Setting(
        "learn.augment.p_flip",
        0.0,
        f"our choice: {REFERENCE} L452-460 flips nothing; its random resize (1–1.125×) + crop is not reproduced",
    ),
    Setting(
        "learn.augment.p_zoom",
        0.0,
        f"our choice: {REFERENCE} L455-456 resizes by 1–1.125× and crops; not "
        "reproduced (CLiC's zoom is not the reference's)",
    ),
    Setting("learn.augment.p_jitter", 0.0, f"{REFERENCE} L452-460: no colour jitter"),
    Setting("learn.augment.p_grayscale", 0.0, f"{REFERENCE} L452-460: no grayscale"),
) + _SHARED


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """One integer in [low, high), as ``np.random.randint(low, high)``."""
    return int(torch.randint(low, high, (), generator=generator))


def make_mask(size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (size, size) {0, 1} hole mask (1 = inpaint) drawn as the reference ``make_mask``: start from all ones,
    zero 1–29 rectangles with sides in [⌊0.03·R⌋, ⌊min(0.25·R, R − 2·0.01·R)⌋) at least ⌊0.01·R⌋ from the edge,
    then invert the whole mask with probability 0.5."""
    mask = torch.ones(size, size)
    low, high, margin = HOLE_MIN * size, HOLE_MAX * size, HOLE_MARGIN * size
    high = min(high, size - margin * 2)
    for _ in range(_randint(1, HOLE_COUNT_HIGH, generator)):
        width = _randint(int(low), int(high), generator)
        height = _randint(int(low), int(high), generator)
        left = _randint(int(margin), size - int(margin) - width + 1, generator)
        top = _randint(int(margin), size - int(margin) - height + 1, generator)
        mask[top : top + height, left : left + width] = 0
    if float(torch.rand((), generator=generator)) < P_INVERT:
        mask = 1 - mask
    return mask


def training_hole(size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The dataset's hole: the whole image with probability 0.1, else :func:`make_mask`."""
    if float(torch.rand((), generator=generator)) < P_FULL_HOLE:
        return torch.ones(size, size)
    return make_mask(size, generator)


def inpainting_input(
    components: SDComponents, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask at latent size (B,1,h,w), masked-image latents (B,4,h,w)) as SD inpainting pipelines build them."""
    masked_image = image * (mask < 0.5)  # hole set to 0 (mid-grey), as StableDiffusionInpaintPipeline
    moments = vae_moments(components, masked_image)
    masked_latents = moments.chunk(2, dim=1)[0] * components.vae.config.scaling_factor
    latent_mask = F.interpolate(mask, size=latents.shape[-2:], mode="nearest")
    return latent_mask, masked_latents


def inpainting_step(state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
    components = state.components
    size = batch.image.shape[-1]
    holes = training_hole(size)[None, None].to(batch.image.device)
    latent_mask, masked_latents = inpainting_input(components, batch.latents, batch.image[None], holes)
    x_t = components.scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    prompt = format_prompt(state.config.context_prompt, object_word, state.tokens.tokens) + batch.suffix
    # The reference's prompt dropout; not while an attention term needs the token in the prompt.
    if float(torch.rand(())) < P_EMPTY_PROMPT and "attention" not in state.objective.needs:
        prompt = ""
    text, ids = encode_text(components, [prompt])
    needs_attention = "attention" in state.objective.needs
    state.capture.set_tokens(state.tokens.positions(ids) if needs_attention else None)
    eps = components.unet(
        torch.cat([x_t, latent_mask, masked_latents], dim=1), batch.timestep, encoder_hidden_states=text
    ).sample
    # The loss weighting: the source mask at latent size (the reference interpolates its weightings, nearest).
    weighting = resize_mask(batch.masks.amax(0)[None, None], x_t.shape[-2:], mode="nearest")
    step = StepTensors(
        noise=batch.noise,
        mask=weighting,
        eps_context=eps,
        target=training_target(components.scheduler, batch.latents, batch.noise, batch.timestep),
    )
    if needs_attention:
        step.attention = state.capture.mean_map(state.attention_resolution, batch_index=slice(0, 1))
        step.attention_masks = batch.masks[None]
    loss, values = state.objective(step)
    state.capture.clear()
    return loss, values


@torch.no_grad()
def inpaint_concept(
    components: SDComponents,
    concept: LearnedConcept,
    target_image: torch.Tensor,
    target_mask: torch.Tensor,
    object_word: str,
    settings: TransferSettings,
    seed: int = 0,
) -> TransferResult:
    if not components.is_inpainting:
        raise ValueError(
            "RealFill needs an inpainting UNet (9 input channels): use tiny-inpaint or an SD inpainting folder"
        )
    capture = ensure_concept(components, concept, settings.capture_layers)
    device = components.unet.device
    generator = torch.Generator().manual_seed(seed)
    scheduler = ddim_scheduler(components)
    scheduler.set_timesteps(settings.steps)
    image = target_image[None].to(device)
    pixel_mask = target_mask.to(device).float()[None, None]
    target_latents = vae_moments(components, image).chunk(2, dim=1)[0] * components.vae.config.scaling_factor
    latent_mask, masked_latents = inpainting_input(components, target_latents, image, pixel_mask)
    prompt = format_prompt(settings.prompt, object_word, concept.tokens)
    text, ids = encode_text(components, ["", prompt])
    token_id = components.tokenizer.convert_tokens_to_ids(concept.token)
    positions = torch.tensor([[int((ids[1] == token_id).nonzero()[0, 0])]]).repeat(2, 1)
    resolution = capture_resolution(capture, components, target_latents.shape[-1])
    latents = torch.randn(target_latents.shape, generator=generator).to(device) * scheduler.init_noise_sigma
    maps = []
    for t in scheduler.timesteps:
        capture.set_tokens(positions)
        model_input = torch.cat([latents, latent_mask, masked_latents], dim=1).repeat(2, 1, 1, 1)
        eps = components.unet(model_input, t, encoder_hidden_states=text).sample
        maps.append(capture.mean_map(resolution, batch_index=slice(1, 2))[0, 0])
        capture.clear()
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + settings.guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, eta=settings.ddim_eta, generator=generator).prev_sample
    region = latent_region(target_mask.to(device), target_latents.shape[-2:])
    latents = region * latents + (1 - region) * target_latents
    capture.set_tokens(None)
    attention, inside = summarize_attention(maps, pixel_mask, target_image.shape[-2:])
    return TransferResult(
        decode(components, latents)[0].cpu(), attention.cpu(), latents.cpu(), target_latents.cpu(), region.cpu(), inside
    )


class RealFill(Method):
    name = "realfill"
    description = "Inpainting UNet: token + cross-attention K/V trained on random-rectangle inpainting of the source"
    trains = "token embedding + cross-attention K/V of the inpainting UNet"
    tasks = frozenset({"learn", "transfer"})
    needs_inpainting = True
    base_config = LearnConfig(terms={"masked_diffusion": 1.0}, train_kv=True)
    declared_settings = {"default": SETTINGS, "original": ORIGINAL_SETTINGS}
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    sources = {setting.key: setting.source for setting in SETTINGS}

    def training_step(
        self, state: TrainState, batch: StepBatch, object_word: str
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return inpainting_step(state, batch, object_word)

    def transfer(
        self,
        components: SDComponents,
        concept: LearnedConcept,
        target_image: torch.Tensor,
        target_mask: torch.Tensor,
        object_word: str,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> TransferResult:
        self.require("transfer")
        settings = self.resolve("transfer", preset or concept.preset, overrides)
        return inpaint_concept(components, concept, target_image, target_mask, object_word, settings, seed)
