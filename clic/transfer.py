"""Concept transfer: blended latent diffusion from t_start with cross-attention guidance (CLiC §3.2).

With a DDIM schedule of ``steps`` steps (timesteps τ_0 > τ_1 > … > τ_{T−1}), the target's latents x_tg are
noised to τ_{t_start} and the remaining ``steps − t_start`` steps run: t_start counts the steps *kept*
from the noised target before editing starts (paper §3.2 and supplement B.3: T − t_start noise levels are
added, 5 ≤ t_start ≤ 15 of 50 DDIM steps; released ``transfer.py`` L100-106 replaces the latents by the noised target while i < t_start,
and its ``reproduce.sh`` L35 notes that a higher t_start keeps more of the original). Before each UNet step:

    x'_t  = M ⊙ x_t + (1 − M) ⊙ noised(x_tg, t)          (blending, CLiC Eq. (6))
    x''_t = x'_t − η ∇_x E(CA(v*, x'_t))                  (cross-attention guidance, Eq. (7))

Two presets of this loop (see :class:`TransferSettings`):

* paper: E = ‖CA − M‖² at the coarsest captured resolution, plain gradient step; M the *any-coverage*
  latent mask (a latent cell the region touches is editable); after the last step the outside is set to
  x_tg itself, so the decoded image is the target's VAE reconstruction there.
* released code (``transfer.py``): blending with the soft 64×64 mask while step index i ≤ 45 (L100), no
  final paste; guidance while i < 30 (L113) as one step of a fresh Adam (lr 0.001 × att_opt, L116-117)
  on E = mean((CA_64 − 1)²) (L131-141), the gradient not flowing through attention outputs (its processor
  computes them under no_grad, ``src/att_processor.py`` L138-140); DDIM η = 1 (L85). Its loop calls the UNet
  from i = 0 and overwrites each result with the re-noised target while i < t_start (L103-104), so the step at
  i = t_start − 1 runs from the fully noised target and its result is blended in at i = t_start (L106): the
  first UNet step that counts is at τ_{t_start−1} (701 for t_start 15 of 50). ``first_step="released"`` runs
  exactly that (the discarded earlier calls are skipped: nothing of them survives); the paper preset keeps
  ``first_step="paper"``, the first step at τ_{t_start} (supplement B.3: T − t_start levels of noise added).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attention import AttentionCapture
from .components import SDComponents, ddim_scheduler
from .concept import LearnedConcept
from .learn import capture_resolution, encode_text, format_prompt, sample_latents, vae_moments
from .losses import resize_mask
from .prediction import check_prediction_type
from .settings import Settings


@dataclass(frozen=True)
class TransferSettings(Settings):
    WHAT = "transfer setting(s)"

    t_start: int = 10  # schedule steps kept from the noised target: the edit runs from timesteps[t_start]
    steps: int = 50  # DDIM schedule length T
    eta: float = 1.0  # attention-guidance step size η (or Adam's lr); 0 disables guidance
    ddim_eta: float = 0.0  # DDIM stochasticity (official code: 1.0)
    guidance_scale: float = 7.5  # classifier-free guidance
    prompt: str = "A {object} with {tokens} style"
    attention_target: str = "mask"  # "mask" (paper) | "ones" (official code)
    capture_layers: str = "up"
    guidance: str = "gradient"  # "gradient": x − η∇‖CA − M‖² (paper) | "adam": one fresh-Adam step on mean((CA − M)²)
    guidance_resolution: int | str | None = None  # None: coarsest captured layer; "latent": the latent grid
    guidance_until: int | None = None  # guide only while the schedule index i < this (official: 30)
    blend_until: int | None = None  # blend only while i ≤ this (official: 45)
    blend_mask: str = "region"  # "region": any-coverage latent mask | "soft": bicubic-antialiased resize (official)
    final_paste: bool = True  # after the last step, the outside is the target's own latents
    target_latents: str = "mean"  # x_tg: the VAE posterior "mean" | a "sample" of it (official)
    detach_attention_outputs: bool = False  # guidance gradient only through the queries (official processor)
    first_step: str = (
        "paper"  # "paper": first step at τ_{t_start} | "released": at τ_{t_start−1}, from the noised target
    )

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"transfer steps must be positive, got {self.steps}")
        if not 1 <= self.t_start < self.steps:
            raise ValueError(
                f"t_start must lie in [1, {self.steps - 1}] (steps kept before editing), got {self.t_start}"
            )
        if self.attention_target not in ("mask", "ones"):
            raise ValueError(f"attention_target must be 'mask' or 'ones', got {self.attention_target!r}")
        choices = {
            "guidance": ("gradient", "adam"),
            "blend_mask": ("region", "soft"),
            "target_latents": ("mean", "sample"),
            "first_step": ("paper", "released"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if isinstance(self.guidance_resolution, str) and self.guidance_resolution != "latent":
            raise ValueError(
                f"guidance_resolution must be a side in cells or 'latent', got {self.guidance_resolution!r}"
            )


@dataclass
class TransferResult:
    image: torch.Tensor  # (3, R, R) in [0, 1]
    attention: torch.Tensor  # (R, R) v* attention averaged over steps and layers, normalised to [0, 1]
    latents: torch.Tensor  # (1, 4, h, w) final latents
    target_latents: torch.Tensor  # (1, 4, h, w) x_tg
    latent_mask: torch.Tensor  # (1, 1, h, w) the mask blending used
    attention_in_mask: float  # share of the v* attention mass inside the mask (diagnostic)
    first_timestep: int = -1  # the timestep of the first denoising step run
    steps_run: int = 0  # denoising steps run (steps − t_start; one more with first_step="released")

    def schedule_record(self) -> dict[str, int]:
        return {"first_timestep": self.first_timestep, "steps_run": self.steps_run}


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


def soft_latent_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The released code's blend mask, made as it makes it (``utils/io_utils.py`` L50-57): the mask as an
    8-bit image resized to the latent grid by PIL's default filter (bicubic, antialiased, 8-bit
    intermediate), /255. Returns a (1, 1, h, w) soft mask on the mask's device."""
    pixels = (mask.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    resized = Image.fromarray(pixels).resize((int(size[-1]), int(size[-2])))
    return (torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)[None, None]).to(mask.device)


@contextmanager
def detached_attention_outputs(unet: torch.nn.Module) -> Iterator[None]:
    """Every attention layer's output detached (the maps it records keep their graph): a gradient from the
    maps to the latents flows through the queries only, as the released processor's no_grad output."""
    from diffusers.models.attention_processor import Attention

    handles = [
        module.register_forward_hook(lambda _m, _i, output: output.detach())
        for module in unet.modules()
        if isinstance(module, Attention)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attention_guidance(
    capture: AttentionCapture,
    components: SDComponents,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    positions: torch.Tensor,
    target: torch.Tensor,
    eta: float,
    resolution: int,
    mode: str = "gradient",
    detach_outputs: bool = False,
) -> torch.Tensor:
    """One guidance step on the latents (the UNet's weights get no gradient).

    ``gradient`` (paper): x − η ∇_x Σ(CA − M)², M resized like the maps (antialiased bilinear).
    ``adam`` (released code): one step of a fresh Adam with lr η on mean((CA − M)²); a first Adam step
    moves each element by η·g/(|g| + 1e-8).
    """
    with torch.enable_grad():
        x = latents.detach().clone().requires_grad_(True)  # Adam steps in place: never on the caller's tensor
        capture.set_tokens(positions)
        with detached_attention_outputs(components.unet) if detach_outputs else nullcontext():
            components.unet(x.to(components.dtype), t, encoder_hidden_states=cond)
        attention = capture.mean_map(resolution)
        difference = (attention - resize_mask(target, attention.shape[-2:], "antialias")) ** 2
        if mode == "adam":
            optimizer = torch.optim.Adam([x], lr=eta)
            difference.mean().backward()
            optimizer.step()
            capture.clear()
            return x.detach()
        (grad,) = torch.autograd.grad(difference.sum(), x)
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
    check_prediction_type(components.scheduler)  # DDIM's step reads the type; an unknown one stops here
    capture = ensure_concept(components, concept, settings.capture_layers)
    device = components.unet.device
    generator = torch.Generator().manual_seed(seed)
    scheduler = ddim_scheduler(components)
    scheduler.set_timesteps(settings.steps)
    # released transfer.py L100-106: the step at i = t_start − 1 starts from the noised target and survives
    first = settings.t_start - 1 if settings.first_step == "released" else settings.t_start
    timesteps = scheduler.timesteps[first:]

    target_latents = _target_latents(components, target_image, settings, generator)
    pixel_mask, mask, guidance_target = _transfer_masks(target_mask.to(device), target_latents, settings)

    uncond, cond, positions = _prompt_embeddings(components, concept, settings.prompt, object_word)
    resolution = capture_resolution(capture, components, target_latents.shape[-1])

    denoiser = _Denoiser(
        components, capture, scheduler, settings, generator, target_latents, mask, guidance_target, uncond, cond
    )
    denoiser.positions, denoiser.resolution = positions, resolution
    denoiser.guidance_resolution = (
        target_latents.shape[-1]
        if settings.guidance_resolution == "latent"
        else int(settings.guidance_resolution or resolution)
    )
    latents = denoiser.noised_target(timesteps[0])
    maps = []
    for index, t in enumerate(timesteps, start=first):  # index: position in the full schedule
        latents, attention_map = denoiser.step(index, t, latents)
        maps.append(attention_map)
    if settings.final_paste:
        latents = mask * latents + (1 - mask) * target_latents
    capture.set_tokens(None)

    attention, inside = summarize_attention(maps, pixel_mask, target_image.shape[-2:])
    return TransferResult(
        decode(components, latents)[0].cpu(),
        attention.cpu(),
        latents.cpu(),
        target_latents.cpu(),
        mask.cpu(),
        inside,
        int(timesteps[0]),
        len(timesteps),
    )


@dataclass
class _Denoiser:
    """One transfer's denoising steps: blending with the noised target, attention guidance, the guided UNet pass
    (whose v* cross-attention map is recorded) and the DDIM step."""

    components: SDComponents
    capture: AttentionCapture
    scheduler: Any
    settings: TransferSettings
    generator: torch.Generator
    target_latents: torch.Tensor
    mask: torch.Tensor
    guidance_target: torch.Tensor
    uncond: torch.Tensor
    cond: torch.Tensor
    positions: Any = None
    resolution: int = 0
    guidance_resolution: int = 0

    def noised_target(self, t: torch.Tensor) -> torch.Tensor:
        noise = target_noise(self.target_latents.shape, self.generator).to(self.components.unet.device)
        return self.scheduler.add_noise(self.target_latents, noise, t.reshape(1))

    def step(self, index: int, t: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step at ``index`` of the full schedule: the next latents and the step's attention map."""
        settings, components, capture = self.settings, self.components, self.capture
        if index < settings.t_start:
            pass  # released start: the latents are the fully noised target (transfer.py L103-104)
        elif settings.blend_until is None or index <= settings.blend_until:
            latents = self.mask * latents + (1 - self.mask) * self.noised_target(t)  # blending
        if settings.eta > 0 and (settings.guidance_until is None or index < settings.guidance_until):
            latents = attention_guidance(
                capture,
                components,
                latents,
                t,
                self.cond,
                self.positions,
                self.guidance_target,
                settings.eta,
                self.guidance_resolution,
                settings.guidance,
                settings.detach_attention_outputs,
            )
        capture.set_tokens(self.positions)
        eps = components.unet(
            torch.cat([latents, latents]).to(components.dtype),
            t,
            encoder_hidden_states=torch.cat([self.uncond, self.cond]),
        ).sample.float()
        attention_map = capture.mean_map(self.resolution, batch_index=slice(1, 2))[0, 0]
        capture.clear()
        eps_uncond, eps_cond = eps.chunk(2)
        eps = eps_uncond + settings.guidance_scale * (eps_cond - eps_uncond)  # linear: ε or v alike
        latents = self.scheduler.step(eps, t, latents, eta=settings.ddim_eta, generator=self.generator).prev_sample
        return latents, attention_map


def _prompt_embeddings(
    components: SDComponents, concept: LearnedConcept, template: str, object_word: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The empty prompt's and the transfer prompt's text embeddings, and the concept tokens' positions (1, k)."""
    prompt = format_prompt(template, object_word, concept.tokens)
    text, ids = encode_text(components, ["", prompt])
    positions = torch.tensor([[_position(ids[1], components.tokenizer, tok, prompt) for tok in concept.tokens]])
    return text[:1], text[1:], positions


def _target_latents(
    components: SDComponents, target_image: torch.Tensor, settings: TransferSettings, generator: torch.Generator
) -> torch.Tensor:
    """The target's latents: a draw of the VAE posterior with the run's generator, or its mean."""
    moments = vae_moments(components, target_image[None].to(components.unet.device)).float()
    if settings.target_latents == "sample":  # released transfer.py L50: latent_dist.sample(generator)
        return sample_latents(components, moments, generator)
    return moments.chunk(2, dim=1)[0] * components.vae.config.scaling_factor  # posterior mean, fp32


def _transfer_masks(
    target_mask: torch.Tensor, target_latents: torch.Tensor, settings: TransferSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The region in pixels (1,1,R,R), the blending mask in latents, and the attention guidance's target."""
    pixel_mask = target_mask.float()[None, None]
    if settings.blend_mask == "soft":
        mask = soft_latent_mask(target_mask, target_latents.shape[-2:])
    else:
        mask = latent_region(target_mask, target_latents.shape[-2:])
    guidance_target = torch.ones_like(pixel_mask) if settings.attention_target == "ones" else pixel_mask
    return pixel_mask, mask, guidance_target


def target_noise(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """The noise of one re-noising of the target (one draw per blended step, as transfer.py L101)."""
    return torch.randn(shape, generator=generator)


def summarize_attention(
    maps: list[torch.Tensor], pixel_mask: torch.Tensor, size: tuple[int, int] | torch.Size
) -> tuple[torch.Tensor, float]:
    """Average per-step (r, r) token maps: the share of the mass inside the (1,1,H,W) mask, and the map
    resized to ``size`` and min-max normalised for display."""
    attention = torch.stack(maps).mean(0)
    inside = float(
        (attention * resize_mask(pixel_mask, attention.shape)[0, 0]).sum() / attention.sum().clamp_min(1e-12)
    )
    attention = F.interpolate(attention[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    attention = (attention - attention.min()) / (attention.max() - attention.min()).clamp_min(1e-12)
    return attention, inside


def _position(ids: torch.Tensor, tokenizer, token: str, prompt: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    hits = (ids == token_id).nonzero()
    if len(hits) == 0:
        raise ValueError(f"the prompt {prompt!r} does not contain the concept token {token!r}")
    return int(hits[0, 0])
