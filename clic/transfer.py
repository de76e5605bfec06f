"""Concept transfer: blended latent diffusion from t_start (paper Eq. 6) with cross-attention guidance (Eq. 7).

With a DDIM schedule of ``steps`` steps, the target's latents x_tg are noised to the level of the
``t_start``-th step from the end and only the last ``t_start`` steps run (5 ≤ t_start ≤ 15 of 50 in the
paper). Before each UNet step:

    x'_t  = M ⊙ x_t + (1 − M) ⊙ noised(x_tg, t)                   (Eq. 6)
    x''_t = x'_t − η ∇_x ‖CA(v*, x'_t) − M‖²                      (Eq. 7)

and after the last step the outside is set to x_tg itself, so outside the (latent) mask the result is
exactly the target's own latents and the decoded image is the target's VAE reconstruction there.
M at latent resolution is the *any-coverage* downsampling of the pixel mask (a latent cell the region
touches is editable), which keeps every untouched cell bit-identical to the target.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from .attention import AttentionCapture
from .concept import LearnedConcept
from .learn import capture_resolution, encode_text, format_prompt, vae_moments
from .losses import resize_mask
from .models import SDComponents
from .settings import reject_unknown_keys


@dataclass(frozen=True)
class TransferSettings:
    t_start: int = 10  # DDIM steps run, counted from the end of the schedule
    steps: int = 50  # DDIM schedule length T
    eta: float = 1.0  # attention-guidance step size η (Eq. 7); 0 disables guidance
    ddim_eta: float = 0.0  # DDIM stochasticity (official code: 1.0)
    guidance_scale: float = 7.5  # classifier-free guidance
    prompt: str = "A {object} with {tokens} style"
    attention_target: str = "mask"  # "mask" (paper) | "ones" (official code)
    capture_layers: str = "up"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TransferSettings":
        reject_unknown_keys(cls, data, "transfer setting(s)")
        settings = cls(**data)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"transfer steps must be positive, got {self.steps}")
        if not 1 <= self.t_start <= self.steps:
            raise ValueError(f"t_start must lie in [1, {self.steps}], got {self.t_start}")
        if self.attention_target not in ("mask", "ones"):
            raise ValueError(f"attention_target must be 'mask' or 'ones', got {self.attention_target!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TransferResult:
    image: torch.Tensor  # (3, R, R) in [0, 1]
    attention: torch.Tensor  # (R, R) v* attention averaged over steps and layers, normalised to [0, 1]
    latents: torch.Tensor  # (1, 4, h, w) final latents
    target_latents: torch.Tensor  # (1, 4, h, w) x_tg
    latent_mask: torch.Tensor  # (1, 1, h, w) the mask blending used
    attention_in_mask: float  # share of the v* attention mass inside the mask (diagnostic)


def latent_region(mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Any-coverage downsampling of a (H, W) pixel mask to a (1, 1, h, w) latent mask in {0, 1}."""
    return (resize_mask(mask[None, None].float(), size) > 0).float()


def decode(components: SDComponents, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (fp32) from latents, cast at the VAE boundary to the VAE's dtype."""
    with torch.no_grad():
        images = components.vae.decode((latents / components.vae.config.scaling_factor).to(components.vae.dtype)).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


def ensure_concept(components: SDComponents, concept: LearnedConcept, capture_layers: str = "up") -> AttentionCapture:
    """Apply ``concept`` to ``components`` once; later calls with the same concept reuse it."""
    active = getattr(components, "_active_concept", None)
    if active is not None:
        if active[0] is concept:
            return active[1]
        raise RuntimeError("these components already carry another concept; load fresh components per concept")
    capture = concept.apply(components, capture_layers)
    components._active_concept = (concept, capture)
    return capture


def attention_guidance(capture: AttentionCapture, components: SDComponents, latents: torch.Tensor, t: torch.Tensor,
                       cond: torch.Tensor, positions: torch.Tensor, target: torch.Tensor, eta: float,
                       resolution: int) -> torch.Tensor:
    """One gradient step of Eq. 7 on the latents (the UNet's weights get no gradient)."""
    with torch.enable_grad():
        x = latents.detach().requires_grad_(True)
        capture.set_tokens(positions)
        components.unet(x.to(components.dtype), t, encoder_hidden_states=cond)
        attention = capture.mean_map(resolution)
        energy = ((attention - resize_mask(target, attention.shape[-2:])) ** 2).sum()
        (grad,) = torch.autograd.grad(energy, x)
    capture.clear()
    return (x - eta * grad).detach()


@torch.no_grad()
def transfer_concept(
    components: SDComponents,
    concept: LearnedConcept,
    target_image: torch.Tensor,
    target_mask: torch.Tensor,
    object_word: str,
    settings: TransferSettings = TransferSettings(),
    *,
    seed: int = 0,
) -> TransferResult:
    """Transfer the learned concept into ``target_mask`` of ``target_image`` ((3,R,R) in [-1,1], (R,R))."""
    settings.validate()
    capture = ensure_concept(components, concept, settings.capture_layers)
    device = components.unet.device
    generator = torch.Generator().manual_seed(seed)
    scheduler = DDIMScheduler.from_config(components.scheduler.config)
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps[settings.steps - settings.t_start:]

    moments = vae_moments(components, target_image[None].to(device)).float()
    target_latents = moments.chunk(2, dim=1)[0] * components.vae.config.scaling_factor  # posterior mean, fp32
    mask = latent_region(target_mask.to(device), target_latents.shape[-2:])
    pixel_mask = target_mask.to(device).float()[None, None]
    guidance_target = torch.ones_like(pixel_mask) if settings.attention_target == "ones" else pixel_mask

    prompt = format_prompt(settings.prompt, object_word, concept.tokens)
    text, ids = encode_text(components, ["", prompt])
    uncond, cond = text[:1], text[1:]
    positions = torch.tensor([[_position(ids[1], components.tokenizer, tok) for tok in concept.tokens]])
    resolution = capture_resolution(capture, components, target_latents.shape[-1])

    def noised_target(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(target_latents.shape, generator=generator).to(device)
        return scheduler.add_noise(target_latents, noise, t.reshape(1))

    latents = noised_target(timesteps[0])
    maps = []
    for t in timesteps:
        latents = mask * latents + (1 - mask) * noised_target(t)  # Eq. 6
        if settings.eta > 0:
            latents = attention_guidance(capture, components, latents, t, cond, positions, guidance_target,
                                         settings.eta, resolution)  # Eq. 7
        capture.set_tokens(positions)
        eps = components.unet(torch.cat([latents, latents]).to(components.dtype), t,
                              encoder_hidden_states=torch.cat([uncond, cond])).sample.float()
        maps.append(capture.mean_map(resolution, batch_index=slice(1, 2))[0, 0])
        capture.clear()
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + settings.guidance_scale * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, eta=settings.ddim_eta, generator=generator).prev_sample
    latents = mask * latents + (1 - mask) * target_latents
    capture.set_tokens(None)

    attention, inside = summarize_attention(maps, pixel_mask, target_image.shape[-2:])
    return TransferResult(decode(components, latents)[0].cpu(), attention.cpu(), latents.cpu(), target_latents.cpu(),
                          mask.cpu(), inside)


def summarize_attention(maps: list[torch.Tensor], pixel_mask: torch.Tensor,
                        size: tuple[int, int] | torch.Size) -> tuple[torch.Tensor, float]:
    """Average per-step (r, r) token maps: the share of the mass inside the (1,1,H,W) mask, and the map
    resized to ``size`` and min-max normalised for display."""
    attention = torch.stack(maps).mean(0)
    inside = float((attention * resize_mask(pixel_mask, attention.shape)[0, 0]).sum() / attention.sum().clamp_min(1e-12))
    attention = F.interpolate(attention[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    attention = (attention - attention.min()) / (attention.max() - attention.min()).clamp_min(1e-12)
    return attention, inside


def _position(ids: torch.Tensor, tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    hits = (ids == token_id).nonzero()
    if len(hits) == 0:
        raise ValueError(f"the prompt does not contain the concept token {token!r}")
    return int(hits[0, 0])
