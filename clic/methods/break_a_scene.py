"""Break-A-Scene (Avrahami et al., SIGGRAPH Asia 2023) as the CLiC paper adapted it.

Masked diffusion loss over the union of the sampled masks + λ·cross-attention loss (token maps at the
16×16 layers of the up *and* down blocks, each token's map divided by its maximum, squared error to the
nearest-resized mask), in two phases: the tokens alone at lr 5e-4 (400 steps), then tokens + cross-attention
weights at 2e-6 (400 steps). With several masks, each step samples a random non-empty subset of the tokens
("union sampling"): the prompt names only those and the masked loss covers the union of their masks.
Preset ``original``: phase 2 fine-tunes the whole UNet and the text encoder (heavier; the original recipe).
"""
from __future__ import annotations

import torch

from ..learn import LearnConfig, Phase, StepBatch, TrainState, encode_text, format_prompt
from ..losses import StepTensors, resize_mask
from .base import Method

LAMBDA_ATTENTION = 1e-2  # reference code: --lambda_attention 1e-2


def union_sampling_step(state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
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
    step = StepTensors(noise=batch.noise, mask=union, eps_context=eps)
    if needs_attention:
        attention = state.capture.mean_map(state.attention_resolution)
        step.attention = attention / attention.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        step.attention_masks = masks[None]
    loss, values = state.objective(step)
    state.capture.clear()
    values["tokens_sampled"] = float(len(chosen))
    return loss, values


class BreakAScene(Method):
    name = "break_a_scene"
    description = "Masked diffusion + attention loss, two phases (tokens, then tokens + cross-attention)"
    trains = "token embeddings, then + cross-attention K/V/Q/out (original: + whole UNet and text encoder)"
    base_config = LearnConfig(
        phases=(Phase(steps=400, token_lr=5e-4), Phase(steps=400, token_lr=2e-6, attention_lr=2e-6)),
        train_kv=True,
        train_q_out=True,
        capture_layers="up+down",
        terms={"masked_diffusion": 1.0, "att": {"weight": LAMBDA_ATTENTION, "resize": "nearest"}},
        context_prompt="a photo of a {object} with {tokens}",
        same_resolution_maps=True,
    )
    presets = {
        "default": {},
        "original": {
            "learn": {
                "phases": (
                    {"steps": 400, "token_lr": 5e-4},
                    {"steps": 400, "token_lr": 2e-6, "unet_lr": 2e-6, "text_encoder_lr": 2e-6},
                ),
                "train_kv": False,
                "train_q_out": False,
            }
        },
    }
    default_preset = "default"
    sources = {
        "phase 1": "Break-A-Scene §3.2 / CLiC §4.2 (tokens only, lr 5e-4, 400 steps)",
        "phase 2": "CLiC §4.2 adaptation (tokens + cross-attention, lr 2e-6, 400 steps); original: full UNet + text encoder",
        "lambda_attention": "Break-A-Scene reference code (--lambda_attention 1e-2)",
        "attention maps": "Break-A-Scene §3.2 (16×16, up and down blocks, normalised by max, nearest-resized masks)",
        "union sampling": "Break-A-Scene §3.2",
        "prompt": "Break-A-Scene reference code ('a photo of <asset>'), with the object word as in CLiC §4.2",
    }

    def training_step(self, state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
        return union_sampling_step(state, batch, object_word)
