"""Two-stage generation (paper §4.1): the first ``stage_one_steps`` DDIM steps with the unmodified model and
"a photo of an OBJECT" lay out the object; the remaining steps use the tuned UNet (trained attention
weights on) with "a photo of an OBJECT, with <v*> style" to put the concept on it.

"Unmodified" means every learned change is off in the first stage (:func:`base_model`): trained attention
projections, fine-tuned UNet and text-encoder weights (Break-A-Scene's ``original``), and LoRA adapters
(SingleInsert) — the first stage's images equal the base model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .attention import AttentionCapture
from .components import SDComponents, ddim_scheduler
from .concept import LearnedConcept
from .learn import capture_resolution, encode_text, format_prompt
from .settings import Settings
from .transfer import decode, ensure_concept


@dataclass(frozen=True)
class GenerateSettings(Settings):
    WHAT = "generation setting(s)"

    steps: int = 50
    stage_one_steps: int = 5  # t_s of the paper
    guidance_scale: float = 7.5
    ddim_eta: float = 0.0
    stage_one_prompt: str = "a photo of an {object}"
    prompt: str = "a photo of an {object}, with {tokens} style"
    images: int = 1
    resolution: int | None = None  # image side; None: the concept's learning resolution, else the model's native

    def validate(self) -> None:
        if self.steps <= 0 or self.images <= 0:
            raise ValueError("generation steps and images must be positive")
        if not 0 <= self.stage_one_steps <= self.steps:
            raise ValueError(f"stage_one_steps must lie in [0, {self.steps}], got {self.stage_one_steps}")
        if self.resolution is not None and self.resolution <= 0:
            raise ValueError(f"generation resolution must be positive, got {self.resolution}")
        from .limits import image_memory_problem  # the bound `clic generate` and the suite reader apply first

        problem = image_memory_problem(self.resolution or 8, self.images)
        if problem is not None:
            raise ValueError(f"generation images {self.images} at resolution {self.resolution}: {problem}")


@dataclass
class GenerationResult:
    images: torch.Tensor  # (N, 3, R, R) in [0, 1]
    prompt: str
    attention: torch.Tensor  # (N, R, R) v* attention of the second stage, normalised per image


@contextmanager
def base_model(components: SDComponents, capture: AttentionCapture | None = None) -> Iterator[None]:
    """Run the block with the base model: the attention layers' own projections, the base UNet and text-encoder
    weights where a concept replaced them (kept by :meth:`LearnedConcept.apply`), and peft adapters disabled."""
    swapped = getattr(components, "_base_states", None) or {}
    modules = {"unet": components.unet, "text_encoder": components.text_encoder}
    tuned = {
        label: {k: v.detach().clone() for k, v in modules[label].state_dict().items() if k in state}
        for label, state in swapped.items()
    }
    for label, state in swapped.items():
        modules[label].load_state_dict(state, strict=False)
    adapted = [m for m in modules.values() if getattr(m, "peft_config", None)]
    for module in adapted:
        module.disable_adapters()
    try:
        if capture is not None:
            with capture.base_weights():
                yield
        else:
            yield
    finally:
        for module in adapted:
            module.enable_adapters()
        for label, state in tuned.items():
            modules[label].load_state_dict(state, strict=False)


@torch.no_grad()
def generate_with_concept(
    components: SDComponents,
    concept: LearnedConcept,
    object_word: str,
    settings: GenerateSettings = GenerateSettings(),
    *,
    seed: int = 0,
    latents: torch.Tensor | None = None,
) -> GenerationResult:
    settings.validate()
    capture = ensure_concept(components, concept)
    device = components.unet.device
    generator = torch.Generator().manual_seed(seed)
    scheduler = ddim_scheduler(components)
    scheduler.set_timesteps(settings.steps)
    n = settings.images
    side = settings.resolution or int(concept.config.get("resolution") or 0) or components.resolution
    if latents is None:  # drawn on the CPU generator: one seed, the same start on every device
        latent_side = side // components.vae_scale_factor
        shape = (n, components.unet.config.in_channels, latent_side, latent_side)
        latents = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma
    latents = latents.to(device, torch.float32)
    prompt_one = format_prompt(settings.stage_one_prompt, object_word, concept.tokens)
    prompt_two = format_prompt(settings.prompt, object_word, concept.tokens)
    stage_two, ids = encode_text(components, ["", prompt_two])
    token_ids = components.tokenizer.convert_tokens_to_ids(concept.tokens)
    positions = torch.tensor([[int((ids[1] == tid).nonzero()[0, 0]) for tid in token_ids]]).repeat(2 * n, 1)
    resolution = capture_resolution(capture, components, latents.shape[-1])
    maps = []

    def denoise(t: torch.Tensor, text: torch.Tensor, record: bool) -> None:
        nonlocal latents
        embeddings = torch.cat([text[:1].expand(n, -1, -1), text[1:2].expand(n, -1, -1)])
        capture.set_tokens(positions if record else None)
        eps = components.unet(
            torch.cat([latents, latents]).to(components.dtype), t, encoder_hidden_states=embeddings
        ).sample.float()
        if record and capture.buffer.maps:
            maps.append(capture.mean_map(resolution, batch_index=slice(n, 2 * n))[:, 0])
        capture.clear()
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + settings.guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, eta=settings.ddim_eta, generator=generator).prev_sample

    timesteps = list(scheduler.timesteps)
    if settings.stage_one_steps:
        with base_model(components, capture):  # the whole first stage, prompts included, on the base model
            stage_one, _ = encode_text(components, ["", prompt_one])
            for t in timesteps[: settings.stage_one_steps]:
                denoise(t, stage_one, record=False)
    for t in timesteps[settings.stage_one_steps :]:
        denoise(t, stage_two, record=True)
    capture.set_tokens(None)
    images = decode(components, latents).cpu()
    return GenerationResult(images, prompt_two, _attention_maps(maps, n, images.shape[-2:]).cpu())


def _attention_maps(maps: list[torch.Tensor], n: int, size: torch.Size) -> torch.Tensor:
    """(n, H, W): the recorded steps' mean attention on the concept tokens at image size, each image's map scaled
    to [0, 1]; zeros when no step recorded one."""
    if not maps:
        return torch.zeros(n, *size)
    attention = torch.nn.functional.interpolate(
        torch.stack(maps).mean(0)[:, None], size=size, mode="bilinear", align_corners=False
    )[:, 0]
    low = attention.amin(dim=(1, 2), keepdim=True)
    return (attention - low) / (attention.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
