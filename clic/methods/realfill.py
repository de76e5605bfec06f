"""RealFill (Tang et al., 2023) as the CLiC paper adapted it: an inpainting UNet learns the concept.

The UNet takes 9 channels — noisy latents, the mask and the masked image's latents — as Stable Diffusion's
inpainting checkpoints do (``tiny`` maps to ``tiny-inpaint``; real runs name an SD inpainting folder).
Learning trains the token + the cross-attention K/V of the inpainting UNet on the source with random
rectangle masks (RealFill §3.2), plain diffusion loss. Transfer inpaints the target mask with the token
from pure noise, classifier-free guided, and puts the target's own latents back outside the mask.
Two-stage generation does not apply to an inpainting model: ``generate`` is unsupported.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from ..concept import LearnedConcept
from ..learn import LearnConfig, StepBatch, TrainState, capture_resolution, encode_text, format_prompt, vae_moments
from ..losses import StepTensors, resize_mask
from ..models import SDComponents
from ..transfer import TransferResult, TransferSettings, decode, ensure_concept, latent_region, summarize_attention
from .base import Method


def random_rectangles(size: int, generator: torch.Generator | None = None, max_boxes: int = 5) -> torch.Tensor:
    """A (size, size) {0,1} mask of 1–max_boxes rectangles, each 10–50% of the side (RealFill's masks)."""
    mask = torch.zeros(size, size)
    for _ in range(int(torch.randint(1, max_boxes + 1, (), generator=generator))):
        h, w = (int(v) for v in torch.randint(size // 10, size // 2 + 1, (2,), generator=generator))
        top = int(torch.randint(0, size - h + 1, (), generator=generator))
        left = int(torch.randint(0, size - w + 1, (), generator=generator))
        mask[top : top + h, left : left + w] = 1
    return mask


def inpainting_input(components: SDComponents, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask at latent size (B,1,h,w), masked-image latents (B,4,h,w)) as SD inpainting pipelines build them."""
    masked_image = image * (mask < 0.5)  # hole set to 0 (mid-grey), as StableDiffusionInpaintPipeline
    moments = vae_moments(components, masked_image)
    masked_latents = moments.chunk(2, dim=1)[0] * components.vae.config.scaling_factor
    latent_mask = F.interpolate(mask, size=latents.shape[-2:], mode="nearest")
    return latent_mask, masked_latents


def inpainting_step(state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
    components = state.components
    size = batch.image.shape[-1]
    holes = random_rectangles(size)[None, None].to(batch.image.device)
    latent_mask, masked_latents = inpainting_input(components, batch.latents, batch.image[None], holes)
    x_t = components.scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    prompt = format_prompt(state.config.context_prompt, object_word, state.tokens.tokens) + batch.suffix
    text, ids = encode_text(components, [prompt])
    needs_attention = "attention" in state.objective.needs
    state.capture.set_tokens(state.tokens.positions(ids) if needs_attention else None)
    eps = components.unet(torch.cat([x_t, latent_mask, masked_latents], dim=1), batch.timestep,
                          encoder_hidden_states=text).sample
    step = StepTensors(noise=batch.noise, mask=resize_mask(batch.masks.amax(0)[None, None], x_t.shape[-2:]), eps_context=eps)
    if needs_attention:
        step.attention = state.capture.mean_map(state.attention_resolution, batch_index=slice(0, 1))
        step.attention_masks = batch.masks[None]
    loss, values = state.objective(step)
    state.capture.clear()
    return loss, values


@torch.no_grad()
def inpaint_concept(components: SDComponents, concept: LearnedConcept, target_image: torch.Tensor,
                    target_mask: torch.Tensor, object_word: str, settings: TransferSettings, seed: int = 0) -> TransferResult:
    if not components.is_inpainting:
        raise ValueError("RealFill needs an inpainting UNet (9 input channels): use tiny-inpaint or an SD inpainting folder")
    capture = ensure_concept(components, concept, settings.capture_layers)
    device = components.unet.device
    generator = torch.Generator().manual_seed(seed)
    scheduler = DDIMScheduler.from_config(components.scheduler.config)
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
    return TransferResult(decode(components, latents)[0].cpu(), attention.cpu(), latents.cpu(), target_latents.cpu(),
                          region.cpu(), inside)


class RealFill(Method):
    name = "realfill"
    description = "Inpainting UNet: token + cross-attention K/V trained on random-rectangle inpainting of the source"
    trains = "token embedding + cross-attention K/V of the inpainting UNet"
    tasks = frozenset({"learn", "transfer"})
    needs_inpainting = True
    base_config = LearnConfig(terms={"diffusion": 1.0}, train_kv=True)
    presets = {"default": {}}
    default_preset = "default"
    sources = {
        "model": "RealFill §3 (SD inpainting UNet, 9 input channels)",
        "masks": "RealFill §3.2 (random rectangles on the reference images)",
        "trained parameters": "CLiC §4.2 adaptation (token + cross-attention instead of LoRA)",
        "lr, steps, prompts, augmentations": "CLiC §4.2 (shared by all baselines)",
    }

    def training_step(self, state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
        return inpainting_step(state, batch, object_word)

    def transfer(self, components: SDComponents, concept: LearnedConcept, target_image: torch.Tensor,
                 target_mask: torch.Tensor, object_word: str, *, preset: str | None = None,
                 overrides: Mapping[str, Any] | None = None, seed: int = 0) -> TransferResult:
        self.require("transfer")
        settings = TransferSettings.from_dict(self.task_settings("transfer", preset or concept.preset, overrides))
        return inpaint_concept(components, concept, target_image, target_mask, object_word, settings, seed)
