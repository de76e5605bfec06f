"""The CLiC step written the way the equations read: the reference the fused step is measured against.

Two UNet passes (x_t with c for l_con and l_att; M ⊙ x_t with c* for l_RoI), each with its own text-encoder
pass, and an attention store in the style of prompt-to-prompt: every attention layer computes its
probabilities explicitly and keeps all of them (all heads, all keys) for the whole step. It is independent
of the code it checks: the noising, the prompts, the mask resampling and the paper's loss formulas
(l_con, l_att, l_RoI and their weighted sum) are written out here, not taken from clic.losses or clic.learn.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from clic.learn import StepBatch, TrainState


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
    processors = {
        name: StoreEverythingProcessor(state.capture.processors.get(name), name, store) for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)
    return store


def _term(config, name: str) -> tuple[float, dict]:
    """(weight, parameters) of a loss term in the config; weight 0 if absent."""
    spec = config.terms.get(name, 0.0)
    if isinstance(spec, (int, float)):
        return float(spec), {}
    return float(spec.get("weight", 1.0)), dict(spec)


def _resize(mask: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """A (1, n, H, W) mask at side × side: cell averages ("area") or antialiased bilinear ("antialias")."""
    if mask.shape[-1] == side:
        return mask
    if mode == "area":
        return F.adaptive_avg_pool2d(mask, side)
    if mode == "antialias":
        return F.interpolate(mask, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"the naive step writes out the paper's forms only, not resize {mode!r}")


def naive_step(state: TrainState, batch: StepBatch, object_word: str, store: dict[str, list[torch.Tensor]]):
    """l_con + λ_att l_att + λ_RoI l_RoI (paper forms) with separate passes; same inputs and weights as fused_step."""
    store.clear()
    components, config, tokens = state.components, state.config, state.tokens
    # The schedule lives where the scheduler made it (the CPU, or meta when built under a meta device): read on
    # the latents' device, as diffusers' add_noise does.
    alpha_bar = components.scheduler.alphas_cumprod.to(batch.latents.device)[batch.timestep].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * batch.latents + (1 - alpha_bar).sqrt() * batch.noise
    latent_mask = F.adaptive_avg_pool2d(batch.masks[None], x_t.shape[-1])[0]  # each latent cell's covered share
    names = tokens.tokens
    context_prompt = config.context_prompt.format(object=object_word, tokens=" and ".join(names), token=names[0])
    text_c, ids_c = encode(components, context_prompt + batch.suffix)
    eps_context = components.unet(x_t, batch.timestep, encoder_hidden_states=text_c).sample
    roi_prompt = config.roi_prompts[0].format(object=object_word, tokens=names[0], token=names[0])
    text_r, _ = encode(components, roi_prompt)
    eps_roi = components.unet(latent_mask[:, None] * x_t, batch.timestep, encoder_hidden_states=text_r).sample

    position = int((ids_c[0] == tokens.token_ids[0]).nonzero()[0, 0])
    resolution = state.attention_resolution
    maps = []
    for name in state.capture.capture_layers:
        probs = store[name][0]  # the context pass's probabilities of this layer
        token_map = probs.mean(dim=1)[0, :, position]
        side = math.isqrt(token_map.shape[0])
        grid = token_map.reshape(1, 1, side, side)
        if side != resolution:
            grid = F.interpolate(
                grid, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=side > resolution
            )
        maps.append(grid)
    attention = torch.stack(maps).mean(0)

    (w_con, con), (w_att, att), (w_roi, _) = _term(config, "con"), _term(config, "att"), _term(config, "roi")
    alpha = con.get("alpha", 0.5)
    union = latent_mask.amax(0, keepdim=True)[None]
    values = {
        "con": (((alpha + (1 - alpha) * union) * (eps_context - batch.noise)) ** 2).mean(),
        "att": ((attention - _resize(batch.masks[None], resolution, att.get("resize", "area"))) ** 2).mean(),
        "roi": ((eps_roi - batch.noise) ** 2).mean(),
    }
    total = w_con * values["con"] + w_att * values["att"] + w_roi * values["roi"]
    return total, {**{k: float(v.detach()) for k, v in values.items()}, "total": float(total.detach())}


def encode(components, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = components.tokenizer(
        prompt,
        padding="max_length",
        max_length=components.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return components.text_encoder(ids)[0], ids
