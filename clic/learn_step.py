"""One training step of the shared learning loop: the state it reads (:class:`TrainState`), the batch it is
given (:class:`StepBatch`) and CLiC's fused step (:func:`fused_step`, paper §3.1, Eq. (5)).

Part of the shared learning loop (:mod:`clic.learn`), which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import AttentionCapture
from .components import SDComponents
from .learn_config import LearnConfig
from .learn_inputs import encode_text, format_prompt
from .losses import Objective, StepTensors, resize_mask
from .prediction import training_target
from .tokens import ConceptTokens


@dataclass
class TrainState:
    """What a training step needs besides the batch: the learnable parts and the objective."""

    components: SDComponents
    tokens: ConceptTokens
    capture: AttentionCapture
    objective: Objective
    config: LearnConfig
    attention_resolution: int
    # The UNet's dtype, looked up once per run (diffusers walks every module to find it: ≈ 0.5 ms per step).
    model_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.model_dtype is None:
            self.model_dtype = self.components.dtype


@dataclass
class StepBatch:
    latents: torch.Tensor  # (1, 4, h, w)
    masks: torch.Tensor  # (n, H, W) pixel masks of this augmentation
    image: torch.Tensor  # (3, H, W) augmented image
    suffix: str
    timestep: torch.Tensor  # (1,)
    noise: torch.Tensor  # (1, 4, h, w)
    roi_latents: torch.Tensor | None = None  # (n, 4, h, w) pixel-space masked variants, if configured
    roi_prompt_indices: tuple[int, ...] | None = None  # the RoI template drawn for each token (several templates)
    valid: torch.Tensor | None = None  # (1, 1, h, w) latent pixels showing the image (not a zoom-out's padding)


def fused_step(state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
    """The CLiC step: context and RoI branches in one UNet pass sharing t and ε."""
    components, config, tokens = state.components, state.config, state.tokens
    needs = state.objective.needs
    n = len(tokens.tokens)
    latent_size = batch.latents.shape[-2:]
    latent_masks = resize_mask(batch.masks[None], latent_size)[0]  # (n, h, w), area-averaged
    union = latent_masks.amax(dim=0, keepdim=True)[None]  # (1, 1, h, w)
    scheduler = components.scheduler

    x_t = scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    rows, prompts, roi_x0 = _branch_rows(state, batch, x_t, latent_masks, object_word)
    model_input = torch.cat(rows)
    text, ids = encode_text(components, prompts)
    capture_on = "attention" in needs
    if capture_on:  # only row 0 (context) is read; the other rows record the same columns
        state.capture.set_tokens(tokens.positions(ids[:1], prompts[:1]).expand(len(prompts), -1))
    else:
        state.capture.set_tokens(None)
    timesteps = batch.timestep.expand(model_input.shape[0])
    # Latents stay fp32; the UNet sees its own dtype; losses are taken in fp32.
    eps = components.unet(model_input.to(state.model_dtype), timesteps, encoder_hidden_states=text).sample.float()

    step = StepTensors(
        noise=batch.noise,
        mask=union,
        pixel_masks=batch.masks,
        valid=batch.valid,
        target=training_target(scheduler, batch.latents, batch.noise, batch.timestep),
    )
    if roi_x0 is not None:  # each RoI row's own clean latents (ε is shared)
        step.roi_target = training_target(
            scheduler, roi_x0, batch.noise.expand(n, -1, -1, -1), batch.timestep.expand(n)
        )
    offset = 0
    if "context" in needs:
        step.eps_context = eps[:1]
        offset = 1
    if "roi" in needs:
        step.eps_roi = eps[offset:]
    if capture_on:
        attention = state.capture.mean_map(state.attention_resolution, batch_index=slice(0, 1))
        if config.normalize_attention:
            attention = attention / attention.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        if config.attention_norm == "minmax":  # released code, learning.py L996-997
            low = attention.amin(dim=(-2, -1), keepdim=True)
            attention = (attention - low) / (attention.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
        step.attention = attention
        step.attention_masks = batch.masks[None]
    loss, values = state.objective(step)
    state.capture.clear()
    return loss, values


def _branch_rows(
    state: TrainState, batch: StepBatch, x_t: torch.Tensor, latent_masks: torch.Tensor, object_word: str
) -> tuple[list[torch.Tensor], list[str], torch.Tensor | None]:
    """The rows of the one UNet pass and their prompts: the context row (x_t with c), then one RoI row per token
    (M_k ⊙ x_t, or the pixel-masked source noised, with c*_k); and the RoI rows' clean latents."""
    config, tokens, needs, scheduler = state.config, state.tokens, state.objective.needs, state.components.scheduler
    n = len(tokens.tokens)
    rows, prompts, roi_x0 = [], [], None
    if "context" in needs:
        rows.append(x_t)
        prompts.append(format_prompt(config.context_prompt, object_word, tokens.tokens) + batch.suffix)
    if "roi" in needs:
        if batch.roi_latents is not None:  # official code: mask in pixel space, then noise
            roi_x0 = batch.roi_latents
            rows.append(scheduler.add_noise(roi_x0, batch.noise.expand(n, -1, -1, -1), batch.timestep.expand(n)))
        else:
            roi_x0 = latent_masks[:, None] * batch.latents
            rows.append(latent_masks[:, None] * x_t)
        indices = batch.roi_prompt_indices or (0,) * n
        for k, token in enumerate(tokens.tokens):
            prompts.append(format_prompt(config.roi_prompts[indices[k]], object_word, [token]))
    return rows, prompts, roi_x0


def capture_resolution(capture: AttentionCapture, components: SDComponents, latent_side: int | None = None) -> int:
    """Side of the coarsest captured layer's map at the latent size in use (``latent_side``; default the
    model's native one): 16 for SD 1.x up blocks at 512 px (the paper's), 4 at 128 px."""
    latent = latent_side or components.latent_size
    depth = len(components.unet.config.block_out_channels) - 1
    sides = []
    for name in capture.capture_layers:
        block = int(name.split(".")[1]) if name.startswith(("up_blocks", "down_blocks")) else None
        if name.startswith("up_blocks"):
            sides.append(latent // 2 ** (depth - block))
        elif name.startswith("down_blocks"):
            sides.append(latent // 2**block)
        else:
            sides.append(latent // 2**depth)
    return max(1, min(sides)) if sides else max(1, latent // 4)


def attention_side(
    config: LearnConfig, capture: AttentionCapture, components: SDComponents, latent_side: int | None = None
) -> int:
    """The side l_att compares maps at: configured, the latent grid in use, or the coarsest captured layer's."""
    if config.attention_resolution == "latent":
        return latent_side or components.latent_size
    return int(config.attention_resolution or capture_resolution(capture, components, latent_side))
