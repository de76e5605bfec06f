"""A diffusers attention processor that records UNet self-attention maps (ConceptExpress locates concepts
by clustering them).

:class:`SelfAttentionRecorder` computes exactly what diffusers' ``AttnProcessor`` computes (explicit
``softmax(QKᵀ/√d)``, so the probabilities exist) on the self-attention layers (``attn1``) it is installed
on, and adds each call's head-averaged (B, P, P) probabilities to a running sum per layer: memory stays one
map per layer however many timesteps are averaged. :func:`recording_self_attention` installs it on the
selected layers, leaves every other processor as it was, and restores the previous ones on exit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

SELF_ATTENTION_LAYERS = {
    "up": r"^up_blocks\..*\.attn1\.processor$",
    "down": r"^down_blocks\..*\.attn1\.processor$",
    "mid": r"^mid_block\..*\.attn1\.processor$",
    "all": r".*\.attn1\.processor$",
}


class SelfAttentionRecorder:
    """diffusers' ``AttnProcessor`` plus a running sum of head-averaged self-attention probabilities."""

    def __init__(
        self, sums: dict[str, torch.Tensor], counts: dict[str, int], layer_name: str, heads: str = "all"
    ) -> None:
        self.sums = sums
        self.counts = counts
        self.layer_name = layer_name
        self.first_head = 0 if heads == "all" else None  # None: heads // 2 (the layer's own head count)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, pixels, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, pixels, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B·heads, P, P)
        first = attn.heads // 2 if self.first_head is None else self.first_head  # "last_half": attn[h // 2:]
        head_mean = probs.reshape(batch, attn.heads, pixels, -1)[:, first:].mean(dim=1).detach().float()
        if self.layer_name in self.sums:
            self.sums[self.layer_name] += head_mean.sum(dim=0)
        else:
            self.sums[self.layer_name] = head_mean.sum(dim=0)
        self.counts[self.layer_name] = self.counts.get(self.layer_name, 0) + batch
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class SelfAttentionMaps:
    """The recorded sums; :meth:`mean` averages them over calls and layers at one resolution."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def mean(self, resolution: int) -> torch.Tensor:
        """(r², r²) self-attention averaged over calls and layers; row i is where pixel i attends.

        A layer at another side is resized on both axes (rows bilinearly as images, then each row's
        target grid, area-weighted) and its rows renormalised, so every layer counts equally.
        """
        if not self.sums:
            raise RuntimeError("no self-attention was recorded: run the UNet inside recording_self_attention()")
        grids = []
        for name, total in self.sums.items():
            layer = total / self.counts[name]  # (P, P)
            side = math.isqrt(layer.shape[0])
            if side != resolution:
                # columns: each row is a map over the key grid
                layer = F.interpolate(
                    layer.reshape(-1, 1, side, side),
                    size=(resolution, resolution),
                    mode="bilinear",
                    align_corners=False,
                ).reshape(side * side, -1)
                # rows: one query per output pixel
                layer = (
                    F.interpolate(
                        layer.T.reshape(-1, 1, side, side),
                        size=(resolution, resolution),
                        mode="bilinear",
                        align_corners=False,
                    )
                    .reshape(resolution * resolution, -1)
                    .T
                )
                layer = layer.clamp_min(0)
                layer = layer / layer.sum(dim=1, keepdim=True).clamp_min(1e-12)
            grids.append(layer)
        return torch.stack(grids).mean(dim=0)


@contextmanager
def recording_self_attention(
    unet: torch.nn.Module, layers: str = "up", max_side: int = 64, heads: str = "all"
) -> Iterator[SelfAttentionMaps]:
    """Record self-attention on the ``layers`` selection whose side is at most ``max_side`` latent pixels
    (SD's 64×64 layers would hold 4096² per map); the UNet's previous processors come back on exit.
    ``heads``: "all" averages every head, "last_half" heads H//2… (ConceptExpress's ptp_utils.py L137-140)."""
    if heads not in ("all", "last_half"):
        raise ValueError(f"heads must be 'all' or 'last_half', got {heads!r}")
    if layers not in SELF_ATTENTION_LAYERS:
        raise ValueError(
            f"unknown self-attention layer selection {layers!r}; known: {', '.join(SELF_ATTENTION_LAYERS)}"
        )
    pattern = re.compile(SELF_ATTENTION_LAYERS[layers])
    previous = dict(unet.attn_processors)
    maps = SelfAttentionMaps()
    recorders = {
        name: SelfAttentionRecorder(maps.sums, maps.counts, name, heads) for name in previous if pattern.match(name)
    }
    if not recorders:
        raise ValueError(f"the UNet has no self-attention layer in the {layers!r} selection")
    sides = _layer_sides(unet)
    recorders = {name: r for name, r in recorders.items() if sides.get(name, 0) <= max_side} or recorders
    unet.set_attn_processor({**previous, **recorders})
    try:
        yield maps
    finally:
        unet.set_attn_processor(previous)


def _layer_sides(unet: torch.nn.Module) -> dict[str, int]:
    """Latent side each attention layer runs at (square latents at the model's sample size)."""
    sample = int(unet.config.sample_size)
    depth = len(unet.config.block_out_channels) - 1
    sides = {}
    for name in unet.attn_processors:
        block = name.split(".")
        if block[0] == "down_blocks":
            sides[name] = sample // 2 ** int(block[1])
        elif block[0] == "up_blocks":
            sides[name] = sample // 2 ** (depth - int(block[1]))
        else:
            sides[name] = sample // 2**depth
    return sides
