"""RoI matching and the automatic source mask (paper §3.3).

RoI matching: a new token w*, initialised from the concept's v*, is trained with l_att only on
"a w* region of an OBJECT" over the source image and its mask, with the concept's own K/V active and
nothing else trainable. On a target, w*'s cross-attention map while denoising is the predicted region.

Automatic source mask: from K images that share a pattern, w* and the cross-attention K/V are trained
with the plain diffusion loss on "An OBJECT with w* style"; w*'s attention map on each image is its mask.

Reading a map: the image's latents (posterior mean) are noised to the ``read_steps``-th of ``denoise_steps``
DDIM steps counted from the end, then denoised with the w* prompt (no classifier-free guidance: only the
conditional branch's attention is read); the w* map, averaged over the captured up-block layers and over
those steps, is resized to the image and min-max normalised to [0, 1] (the soft map). The binary mask is
``soft ≥ threshold``; a constant map normalises to 0 everywhere, so it predicts an empty mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .attention import AttentionCapture
from .components import SDComponents, ddim_scheduler
from .concept import LearnedConcept
from .learn import (
    ConceptSource,
    LearnConfig,
    capture_resolution,
    encode_text,
    format_prompt,
    learn_concept,
    vae_moments,
)
from .settings import Settings
from .tokens import add_learned_tokens
from .transfer import ensure_concept

# Where a learned w* is kept in a concept: the vector in ``arrays``, the settings it was learned with in ``extras``.
REGION_TOKEN_KEY = "region_token"


@dataclass(frozen=True)
class MatchSettings(Settings):
    WHAT = "match setting(s)"

    steps: int = 500  # w* learning steps: paper §3.3 (500)
    lr: float = 1e-5  # CLiC's learning config (paper §4 preamble, Adam 1e-5); §3.3 gives no other value
    prompt: str = "a {token} region of an {object}"  # paper §3.3
    auto_prompt: str = "An {object} with {token} style"  # paper §3.3, automatic source mask
    placeholder: str = "<w*>"
    denoise_steps: int = 50  # DDIM schedule length while reading the map: the paper's T = 50 (supplement B.3)
    # DDIM steps read, the last ones of the schedule: a mid noise level (our choice; the paper gives none). Not
    # transfer's t_start (steps kept, counted from the start): `clic match --t-start` is its deprecated alias.
    read_steps: int = 25
    threshold: float = 0.5  # on the min-max normalised soft map (our choice)
    capture_layers: str = "up"  # as l_att: up-block cross-attention (paper §3.1)

    def validate(self) -> None:
        if self.steps <= 0 or self.denoise_steps <= 0:
            raise ValueError(
                f"match steps and denoise_steps must be positive, got {self.steps} and {self.denoise_steps}"
            )
        if not 1 <= self.read_steps <= self.denoise_steps:
            raise ValueError(f"read_steps must lie in [1, {self.denoise_steps}], got {self.read_steps}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")

    def region_learning(self) -> dict[str, Any]:
        """The settings that determine a learned w* (a stored w* learned otherwise is not reused)."""
        return {
            "steps": self.steps,
            "lr": self.lr,
            "prompt": self.prompt,
            "placeholder": self.placeholder,
            "capture_layers": self.capture_layers,
        }


@dataclass
class MatchResult:
    soft_map: torch.Tensor  # (H, W) in [0, 1]
    mask: torch.Tensor  # (H, W) bool
    threshold: float


def threshold_map(
    raw: torch.Tensor, size: tuple[int, int] | torch.Size, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw maps (..., h, w) → (soft maps (..., H, W) min-max normalised per map, masks soft ≥ threshold)."""
    lead = raw.shape[:-2]
    maps = raw.reshape(-1, 1, *raw.shape[-2:]).float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    soft = (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
    soft = soft.reshape(*lead, *soft.shape[-2:])
    return soft, soft >= threshold


@torch.no_grad()
def denoising_attention(
    components: SDComponents,
    capture: AttentionCapture,
    image: torch.Tensor,
    prompt: str,
    token: str,
    settings: MatchSettings,
    seed: int = 0,
) -> torch.Tensor:
    """``token``'s attention map (r, r) while denoising ``image`` ((3, R, R) in [-1, 1]) with ``prompt``."""
    device = components.unet.device
    generator = torch.Generator().manual_seed(seed)
    scheduler = ddim_scheduler(components)
    scheduler.set_timesteps(settings.denoise_steps)
    timesteps = scheduler.timesteps[settings.denoise_steps - settings.read_steps :]
    latents = (
        vae_moments(components, image[None].to(device)).float().chunk(2, dim=1)[0]
        * components.vae.config.scaling_factor
    )
    noise = torch.randn(latents.shape, generator=generator).to(device)
    latents = scheduler.add_noise(latents, noise, timesteps[:1])
    text, ids = encode_text(components, [prompt])
    token_id = components.tokenizer.convert_tokens_to_ids(token)
    hits = (ids[0] == token_id).nonzero()
    if len(hits) == 0:
        raise ValueError(f"the prompt {prompt!r} does not contain the token {token!r}")
    positions = hits[:1, 0][None]  # (1, 1)
    resolution = capture_resolution(capture, components, latents.shape[-1])
    maps = []
    try:
        for t in timesteps:
            capture.set_tokens(positions)
            eps = components.unet(latents.to(components.dtype), t, encoder_hidden_states=text).sample.float()
            maps.append(capture.mean_map(resolution)[0, 0])
            capture.clear()
            latents = scheduler.step(eps, t, latents).prev_sample
    finally:
        capture.set_tokens(None)
    return torch.stack(maps).mean(0).cpu()


def source_from_concept(concept: LearnedConcept) -> ConceptSource:
    """The source image and masks :func:`clic.learn.learn_concept` kept in the concept."""
    if "source_image" not in concept.arrays or "source_masks" not in concept.arrays:
        raise ValueError("the concept keeps no source image/mask (learned before they were saved): learn it again")
    return ConceptSource(concept.arrays["source_image"], concept.arrays["source_masks"], concept.object_word)


def learn_region_token(
    components: SDComponents,
    concept: LearnedConcept,
    source: ConceptSource,
    settings: MatchSettings = MatchSettings(),
    seed: int = 0,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """Learn w* for the concept's first token from ``source`` (first image, first mask); returns its vector.

    The concept is applied to ``components`` first (its K/V stay active and frozen); only w*'s embedding
    row trains, with l_att alone. The vector is stored in ``concept.arrays`` so saving the concept keeps it.
    """
    capture = ensure_concept(components, concept, settings.capture_layers)
    region_source = ConceptSource(source.images[0], source.image_masks[0, :1], source.object_word)
    config = LearnConfig(
        steps=settings.steps,
        lr=settings.lr,
        train_kv=False,
        capture_layers=settings.capture_layers,
        terms={"att": 1.0},
        context_prompt=settings.prompt,
        placeholder=settings.placeholder,
        init_word=concept.tokens[0],  # v*'s tokenizer entry: ConceptTokens reads its embedding row, i.e. v*'s vector
    )
    region = learn_concept(
        components,
        region_source,
        config,
        method="region_token",
        preset=concept.preset,
        seed=seed,
        progress=progress,
        capture=capture,
    )
    vector = region.vectors[settings.placeholder]
    concept.arrays[REGION_TOKEN_KEY] = vector
    concept.extras[REGION_TOKEN_KEY] = {
        **settings.region_learning(),
        "seed": seed,
        "final_att": region.loss_log[-1]["att"],
    }
    return vector


def _ensure_region_token(
    components: SDComponents, concept: LearnedConcept, settings: MatchSettings, seed: int, progress: bool
) -> AttentionCapture:
    capture = ensure_concept(components, concept, settings.capture_layers)
    if settings.placeholder in components.tokenizer.get_vocab():
        return capture  # learned on these components already
    stored = concept.extras.get(REGION_TOKEN_KEY, {})
    if (
        REGION_TOKEN_KEY in concept.arrays
        and {k: stored.get(k) for k in settings.region_learning()} == settings.region_learning()
    ):
        add_learned_tokens(
            components.tokenizer, components.text_encoder, {settings.placeholder: concept.arrays[REGION_TOKEN_KEY]}
        )
    else:
        learn_region_token(components, concept, source_from_concept(concept), settings, seed, progress=progress)
    return capture


def match_region(
    components: SDComponents,
    concept: LearnedConcept,
    target_image: torch.Tensor,
    object_word: str,
    settings: MatchSettings = MatchSettings(),
    seed: int = 0,
    *,
    progress: bool = False,
) -> MatchResult:
    """Predict the concept's region in ``target_image`` ((3, R, R) in [-1, 1]) from w*'s attention.

    Uses the w* stored in the concept if it was learned with the same settings, else learns it (and stores
    it in ``concept``) from the source image the concept keeps. ``components`` must be fresh or carry
    this concept only.
    """
    settings.validate()
    capture = _ensure_region_token(components, concept, settings, seed, progress)
    prompt = format_prompt(settings.prompt, object_word, [settings.placeholder])
    raw = denoising_attention(components, capture, target_image, prompt, settings.placeholder, settings, seed)
    soft, mask = threshold_map(raw, target_image.shape[-2:], settings.threshold)
    return MatchResult(soft, mask, settings.threshold)


def automatic_source_mask(
    components: SDComponents,
    images: torch.Tensor,
    object_word: str,
    settings: MatchSettings = MatchSettings(),
    seed: int = 0,
    *,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source masks for K images sharing a pattern: (soft (K, R, R) in [0, 1], mask (K, R, R) bool).

    Trains w* and the cross-attention K/V (plain diffusion loss, "An OBJECT with w* style") over the
    images on ``components`` (which it modifies: use fresh ones), then reads w*'s map on each image.
    """
    settings.validate()
    if images.dim() != 4:
        raise ValueError(f"images must be (K, 3, R, R), got {tuple(images.shape)}")
    count, _, height, width = images.shape
    source = ConceptSource(images, torch.ones(count, 1, height, width), object_word)
    config = LearnConfig(
        steps=settings.steps,
        lr=settings.lr,
        train_kv=True,
        capture_layers=settings.capture_layers,
        terms={"diffusion": 1.0},
        context_prompt=settings.auto_prompt,
        placeholder=settings.placeholder,
    )
    capture = AttentionCapture(components.unet, settings.capture_layers, train_kv=True)
    learn_concept(components, source, config, method="auto_mask", seed=seed, progress=progress, capture=capture)
    components.unet.requires_grad_(False)
    prompt = format_prompt(settings.auto_prompt, object_word, [settings.placeholder])
    raw = torch.stack(
        [
            denoising_attention(components, capture, image, prompt, settings.placeholder, settings, seed)
            for image in images
        ]
    )
    return threshold_map(raw, (height, width), settings.threshold)
