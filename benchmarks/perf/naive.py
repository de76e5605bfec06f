"""The CLiC step written the way the equations read: the reference the fused step is measured against.

Two UNet passes (x_t with c for l_con and l_att; M ⊙ x_t with c* for l_RoI), each with its own text-encoder
pass, and an attention store in the style of prompt-to-prompt: every attention layer computes its
probabilities explicitly and keeps all of them (all heads, all keys) for the whole step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from clic.learn import StepBatch, TrainState, encode_text, format_prompt
from clic.losses import StepTensors, resize_mask


class StoreEverythingProcessor(torch.nn.Module):
    """Explicit softmax attention on the Custom Diffusion K/V copies, storing every probability tensor."""

    def __init__(self, trained, name: str, store: dict[str, list[torch.Tensor]]) -> None:
        super().__init__()
        self.trained = trained  # the fused processor whose trainable K/V this layer shares (or None)
        self.name = name
        self.__dict__["store"] = store

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        batch, pixels, inner = hidden_states.shape
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        trained = self.trained
        use_kv = cross and trained is not None and trained.train_kv
        query = attn.to_q(hidden_states)
        key = trained.to_k_custom_diffusion(context) if use_kv else attn.to_k(context)
        value = trained.to_v_custom_diffusion(context) if use_kv else attn.to_v(context)
        if use_kv:  # as Custom Diffusion: the start token's K/V are not trained
            key = torch.cat([key[:, :1].detach(), key[:, 1:]], dim=1)
            value = torch.cat([value[:, :1].detach(), value[:, 1:]], dim=1)
        heads, dim = attn.heads, inner // attn.heads
        q = query.view(batch, -1, heads, dim).transpose(1, 2)
        k = key.view(batch, -1, heads, dim).transpose(1, 2)
        v = value.view(batch, -1, heads, dim).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(dim)).softmax(-1)
        self.store.setdefault(self.name, []).append(probs)
        out = (probs @ v).transpose(1, 2).reshape(batch, -1, inner)
        return attn.to_out[1](attn.to_out[0](out))


def install_naive(state: TrainState) -> dict[str, list[torch.Tensor]]:
    """Swap every processor for a store-everything one sharing the fused processors' trained weights."""
    store: dict[str, list[torch.Tensor]] = {}
    unet = state.components.unet
    processors = {name: StoreEverythingProcessor(state.capture.processors.get(name), name, store)
                  for name in unet.attn_processors}
    unet.set_attn_processor(processors)
    return store


def naive_step(state: TrainState, batch: StepBatch, object_word: str, store: dict[str, list[torch.Tensor]]):
    """l_con + λ_att l_att + λ_RoI l_RoI with separate passes; same inputs and same weights as fused_step."""
    store.clear()
    components, config, tokens = state.components, state.config, state.tokens
    scheduler = components.scheduler
    x_t = scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    latent_mask = resize_mask(batch.masks[None], x_t.shape[-2:])[0]
    context_prompt = format_prompt(config.context_prompt, object_word, tokens.tokens) + batch.suffix
    text_c, ids_c = encode_text(components, [context_prompt])
    eps_context = components.unet(x_t, batch.timestep, encoder_hidden_states=text_c).sample
    roi_prompt = format_prompt(config.roi_prompts[0], object_word, tokens.tokens)
    text_r, _ = encode_text(components, [roi_prompt])
    eps_roi = components.unet(latent_mask[:, None] * x_t, batch.timestep, encoder_hidden_states=text_r).sample

    position = int(tokens.positions(ids_c)[0, 0])
    resolution = state.attention_resolution
    maps = []
    for name in state.capture.capture_layers:
        probs = store[name][0]  # the context pass's probabilities of this layer
        token_map = probs.mean(dim=1)[0, :, position]
        side = math.isqrt(token_map.shape[0])
        grid = token_map.reshape(1, 1, side, side)
        if side != resolution:
            grid = F.interpolate(grid, size=(resolution, resolution), mode="bilinear", align_corners=False)
        maps.append(grid)
    attention = torch.stack(maps).mean(0)
    step = StepTensors(noise=batch.noise, mask=latent_mask.amax(0, keepdim=True)[None], eps_context=eps_context,
                       eps_roi=eps_roi, attention=attention, attention_masks=batch.masks[None])
    return state.objective(step)
