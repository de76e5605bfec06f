"""Diffusers attention processors with per-token capture and trainable K/V (Q/out): see :mod:`clic.attention`.

A module of its own because it subclasses diffusers' processors: importing it imports diffusers, which
:mod:`clic.attention` (and so planning a run) does only when processors are installed.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, CustomDiffusionAttnProcessor2_0

from .capture_buffer import CaptureBuffer


class ConceptAttnProcessor(CustomDiffusionAttnProcessor2_0):
    """Custom Diffusion attention (optionally trainable K/V and Q/out) with optional token capture."""

    def __init__(
        self,
        train_kv: bool = False,
        train_q_out: bool = False,
        hidden_size: int | None = None,
        cross_attention_dim: int | None = None,
        out_bias: bool = True,
        buffer: CaptureBuffer | None = None,
        layer_name: str = "",
    ) -> None:
        super().__init__(
            train_kv=train_kv,
            train_q_out=train_q_out,
            hidden_size=hidden_size,
            cross_attention_dim=cross_attention_dim,
            out_bias=out_bias,
        )
        # Plain attributes, not modules: they stay out of the state dict that diffusers saves.
        self.__dict__["buffer"] = buffer
        self.__dict__["layer_name"] = layer_name

    @classmethod
    def from_attention(
        cls,
        attn: Attention,
        *,
        train_kv: bool,
        train_q_out: bool,
        buffer: CaptureBuffer | None,
        layer_name: str,
    ) -> ConceptAttnProcessor:
        """A processor whose trainable copies start equal to the layer's own weights (output unchanged)."""
        processor = cls(
            train_kv=train_kv,
            train_q_out=train_q_out,
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features,
            out_bias=attn.to_out[0].bias is not None,
            buffer=buffer,
            layer_name=layer_name,
        )
        # Trained copies are fp32 master weights whatever the frozen model's dtype, made on the model's device.
        processor.to(device=attn.to_q.weight.device, dtype=torch.float32)
        with torch.no_grad():
            if train_kv:
                processor.to_k_custom_diffusion.weight.copy_(attn.to_k.weight)
                processor.to_v_custom_diffusion.weight.copy_(attn.to_v.weight)
            if train_q_out:
                processor.to_q_custom_diffusion.weight.copy_(attn.to_q.weight)
                processor.to_out_custom_diffusion[0].weight.copy_(attn.to_out[0].weight)
                if attn.to_out[0].bias is not None:
                    processor.to_out_custom_diffusion[0].bias.copy_(attn.to_out[0].bias)
        return processor

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        buffer = self.buffer
        capturing = (
            buffer is not None
            and buffer.enabled
            and buffer.token_positions is not None
            and encoder_hidden_states is not None
        )
        if encoder_hidden_states is None:  # self-attention: nothing trained or captured here
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)
        return self._cross_attention(attn, hidden_states, encoder_hidden_states, buffer if capturing else None)

    @staticmethod
    def _project(layer: torch.nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
        """A trained copy keeps fp32 master weights while the frozen model may run in fp16/bf16."""
        return layer(inputs.to(layer.weight.dtype)).to(inputs.dtype)

    def _cross_attention(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        buffer: CaptureBuffer | None,
    ) -> torch.Tensor:
        batch, pixels, inner_dim = hidden_states.shape
        query = (
            self._project(self.to_q_custom_diffusion, hidden_states) if self.train_q_out else attn.to_q(hidden_states)
        )
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if self.train_kv:
            key = self._project(self.to_k_custom_diffusion, encoder_hidden_states)
            value = self._project(self.to_v_custom_diffusion, encoder_hidden_states)
            # As CustomDiffusionAttnProcessor2_0: the start-of-text token's K/V are not trained.
            key = torch.cat([key[:, :1].detach(), key[:, 1:]], dim=1)
            value = torch.cat([value[:, :1].detach(), value[:, 1:]], dim=1)
        else:
            key = attn.to_k(encoder_hidden_states)
            value = attn.to_v(encoder_hidden_states)

        heads = attn.heads
        head_dim = inner_dim // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)

        if buffer is None:  # not captured: fused SDPA
            out = F.scaled_dot_product_attention(query, key, value)
        else:
            # SDPA's default scale 1/sqrt(head_dim) is what the stock processors use too. Only 77 keys, so
            # the explicit softmax is cheap; only the requested token columns are kept. The softmax is fp32;
            # the scores are too when the model upcasts attention (SD 2.x: fp16 QKᵀ overflows there).
            with _autocast_off(query.device):
                score_dtype = torch.float32 if attn.upcast_attention else query.dtype  # query: autocast's choice
                query_s, key_s = query.to(score_dtype), key.to(score_dtype)
                probs = (query_s @ key_s.transpose(-1, -2) * (1.0 / math.sqrt(head_dim))).softmax(
                    dim=-1, dtype=torch.float32
                )
            positions = buffer.token_positions.to(probs.device)
            if positions.shape[0] != batch:  # e.g. classifier-free guidance doubled the batch
                positions = positions.repeat(batch // positions.shape[0], 1)
            kept = probs[:, heads // 2 :] if buffer.heads == "last_half" else probs
            index = positions[:, None, None, :].expand(batch, kept.shape[1], pixels, positions.shape[1])
            buffer.maps[self.layer_name] = kept.gather(-1, index).mean(dim=1)  # (B, pixels, n), fp32
            out = probs.to(value.dtype) @ value
        out = out.transpose(1, 2).reshape(batch, -1, inner_dim).to(query.dtype)
        if self.train_q_out:
            return self.to_out_custom_diffusion[1](self._project(self.to_out_custom_diffusion[0], out))
        return attn.to_out[1](attn.to_out[0](out))


def _autocast_off(device: torch.device):
    """Leave autocast for a block that must run in the dtypes it chose (only where autocast is on)."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()
