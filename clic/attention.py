"""Attention processors that record per-token cross-attention maps and carry trainable K/V (Q/out).

Everything that reads or changes attention goes through diffusers' processor mechanism:

* :class:`ConceptAttnProcessor` is diffusers' ``CustomDiffusionAttnProcessor2_0`` (same parameters, same
  state-dict keys, so ``unet.save_attn_procs``/``load_attn_procs`` read and write our files) plus
  optional capture. On a captured cross-attention layer it computes ``softmax(QKᵀ/√d)`` explicitly —
  the key axis is only the 77 text tokens, so this is cheap — and stores, differentiably, the
  head-averaged probabilities of the requested token columns only: ``(B, pixels, n_tokens)``, never the
  whole probability tensor. Uncaptured layers run on fused SDPA.
* :class:`AttentionCapture` installs the processors, selects layers, holds the token positions and
  returns the layer-averaged map at a common resolution.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, CustomDiffusionAttnProcessor2_0

# Layer selections by name. SD 1.x up blocks hold 16², 32², 64² cross-attention at 512 px.
LAYER_PATTERNS = {
    "up": r"^up_blocks\..*\.attn2\.processor$",
    "down": r"^down_blocks\..*\.attn2\.processor$",
    "mid": r"^mid_block\..*\.attn2\.processor$",
    "up+down": r"^(up|down)_blocks\..*\.attn2\.processor$",
    "all": r".*\.attn2\.processor$",
}


def select_layers(processor_names: Sequence[str], which: str | Sequence[str]) -> list[str]:
    """Cross-attention processor names matching a named selection (``up``, ``down``, ...) or explicit names."""
    if isinstance(which, str):
        if which not in LAYER_PATTERNS:
            raise ValueError(f"unknown layer selection {which!r}; known: {', '.join(LAYER_PATTERNS)}")
        pattern = re.compile(LAYER_PATTERNS[which])
        return [name for name in processor_names if pattern.match(name)]
    unknown = sorted(set(which) - set(processor_names))
    if unknown:
        raise ValueError(f"unknown attention layers: {', '.join(unknown)}")
    return list(which)


class CaptureBuffer:
    """What one set of processors shares: the token columns to record and the maps recorded."""

    def __init__(self) -> None:
        self.token_positions: torch.Tensor | None = None  # (B, n) long
        self.maps: dict[str, torch.Tensor] = {}  # layer -> (B, pixels, n)
        self.enabled = True

    def clear(self) -> None:
        self.maps.clear()


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
    ) -> "ConceptAttnProcessor":
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
        with torch.no_grad():
            if train_kv:
                processor.to_k_custom_diffusion.weight.copy_(attn.to_k.weight)
                processor.to_v_custom_diffusion.weight.copy_(attn.to_v.weight)
            if train_q_out:
                processor.to_q_custom_diffusion.weight.copy_(attn.to_q.weight)
                processor.to_out_custom_diffusion[0].weight.copy_(attn.to_out[0].weight)
                if attn.to_out[0].bias is not None:
                    processor.to_out_custom_diffusion[0].bias.copy_(attn.to_out[0].bias)
        # Trained copies stay fp32 (master weights) whatever the frozen model's dtype.
        return processor.to(device=attn.to_q.weight.device, dtype=torch.float32)

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
        query = self._project(self.to_q_custom_diffusion, hidden_states) if self.train_q_out else attn.to_q(hidden_states)
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
            # the explicit softmax is cheap; only the requested token columns are kept.
            probs = (query @ key.transpose(-1, -2) * (1.0 / math.sqrt(head_dim))).softmax(dim=-1)
            positions = buffer.token_positions.to(probs.device)
            if positions.shape[0] != batch:  # e.g. classifier-free guidance doubled the batch
                positions = positions.repeat(batch // positions.shape[0], 1)
            index = positions[:, None, None, :].expand(batch, heads, pixels, positions.shape[1])
            buffer.maps[self.layer_name] = probs.gather(-1, index).mean(dim=1)  # (B, pixels, n)
            out = probs @ value
        out = out.transpose(1, 2).reshape(batch, -1, inner_dim).to(query.dtype)
        if self.train_q_out:
            return self.to_out_custom_diffusion[1](self._project(self.to_out_custom_diffusion[0], out))
        return attn.to_out[1](attn.to_out[0](out))


class AttentionCapture:
    """Install :class:`ConceptAttnProcessor` on a UNet and read the averaged token maps back.

    ``capture_layers``: which cross-attention layers record maps (default the up blocks, as the paper).
    ``train_kv`` / ``train_q_out``: which layers get trainable Custom Diffusion copies (cross-attention
    layers only; ``train_layers`` selects them, default all cross-attention layers).
    Every other layer keeps diffusers' fused ``AttnProcessor2_0``.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        capture_layers: str | Sequence[str] = "up",
        *,
        train_kv: bool = False,
        train_q_out: bool = False,
        train_layers: str | Sequence[str] = "all",
    ) -> None:
        self.unet = unet
        self.buffer = CaptureBuffer()
        self.same_resolution_only = False  # mean_map: only layers whose native side equals the resolution
        names = list(unet.attn_processors)
        self.capture_layers = select_layers(names, capture_layers) if capture_layers else []
        self.train_layers = select_layers(names, train_layers) if (train_kv or train_q_out) else []
        modules = dict(unet.named_modules())
        processors: dict[str, object] = {}
        for name in names:
            trained = name in self.train_layers
            captured = name in self.capture_layers
            if trained or captured:
                attn = modules[name.removesuffix(".processor")]
                processors[name] = ConceptAttnProcessor.from_attention(
                    attn,
                    train_kv=trained and train_kv,
                    train_q_out=trained and train_q_out,
                    buffer=self.buffer if captured else None,
                    layer_name=name,
                )
            else:
                processors[name] = AttnProcessor2_0()
        self.processors = {n: p for n, p in processors.items() if isinstance(p, ConceptAttnProcessor)}
        unet.set_attn_processor(processors)  # consumes the dict

    # --------------------------------------------------------------------------------- parameters
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for name in self.train_layers for p in self.processors[name].parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trained weights under the keys ``unet.save_attn_procs`` writes."""
        return {
            f"{name}.{key}": tensor.detach().clone()
            for name in self.train_layers
            for key, tensor in self.processors[name].state_dict().items()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.train_layers:
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                self.processors[name].load_state_dict(sub)

    # ------------------------------------------------------------------------------------ capture
    def set_tokens(self, positions: torch.Tensor | Sequence[Sequence[int]] | None) -> None:
        """Token columns to record, one row per batch element: (B, n) positions in the prompt."""
        if positions is not None and not isinstance(positions, torch.Tensor):
            positions = torch.tensor(positions, dtype=torch.long)
        self.buffer.token_positions = positions
        self.buffer.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run forward passes without recording (e.g. the RoI branch, or inference steps)."""
        previous = self.buffer.enabled
        self.buffer.enabled = False
        try:
            yield
        finally:
            self.buffer.enabled = previous

    @contextmanager
    def base_weights(self, enabled: bool = True) -> Iterator[None]:
        """Run with the layers' own (untrained) projections: the "unmodified UNet" of two-stage generation."""
        if not enabled:
            yield
            return
        saved = {name: (p.train_kv, p.train_q_out) for name, p in self.processors.items()}
        for p in self.processors.values():
            p.train_kv = p.train_q_out = False
        try:
            yield
        finally:
            for name, (kv, q_out) in saved.items():
                self.processors[name].train_kv, self.processors[name].train_q_out = kv, q_out

    def clear(self) -> None:
        self.buffer.clear()

    def maps(self) -> dict[str, torch.Tensor]:
        return dict(self.buffer.maps)

    def mean_map(self, resolution: int, batch_index: slice | int | None = None) -> torch.Tensor:
        """Token maps averaged over the captured layers: (B, n, resolution, resolution).

        Each layer's (B, h·w, n) map is reshaped to its square grid and bilinearly resized to
        ``resolution`` before averaging, so layers of different resolutions count equally. Downsampling is
        antialiased (a 64×64 map read at 16×16 without it samples only 4 of each 16 cells).
        """
        if not self.buffer.maps:
            raise RuntimeError("no attention was captured: set_tokens() before the forward pass")
        grids = []
        layer_maps = list(self.buffer.maps.values())
        if self.same_resolution_only:
            layer_maps = [m for m in layer_maps if m.shape[1] == resolution * resolution] or layer_maps
        for layer_map in layer_maps:
            if batch_index is not None:
                layer_map = layer_map[batch_index]
                if layer_map.dim() == 2:
                    layer_map = layer_map[None]
            b, pixels, n = layer_map.shape
            side = math.isqrt(pixels)
            if side * side != pixels:
                raise ValueError(f"attention map of {pixels} pixels is not square")
            grid = layer_map.transpose(1, 2).reshape(b, n, side, side)
            if side != resolution:
                grid = F.interpolate(grid, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                     antialias=side > resolution)
            grids.append(grid)
        return torch.stack(grids).mean(dim=0)


def restore_default_processors(unet: torch.nn.Module) -> None:
    """Back to diffusers' fused processors everywhere (drops trained copies)."""
    unet.set_attn_processor(AttnProcessor2_0())
