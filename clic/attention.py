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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .capture_buffer import CaptureBuffer

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
        from diffusers.models.attention_processor import AttnProcessor2_0

        from .attention_processor import ConceptAttnProcessor

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
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                self.processors[name].load_state_dict(sub)

    # ------------------------------------------------------------------------------------ capture
    def set_tokens(self, positions: torch.Tensor | Sequence[Sequence[int]] | None) -> None:
        """Token columns to record, one row per batch element: (B, n) positions in the prompt."""
        if positions is not None and not isinstance(positions, torch.Tensor):
            positions = torch.tensor(positions, dtype=torch.long)
        if positions is not None:  # moved once here, not in every layer; a parameter's device, not diffusers'
            positions = positions.to(next(self.unet.parameters()).device)  # ModelMixin.device (walks every module)
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
                # float32: CPU antialiasing has no half-precision kernel (autocast may hand us bf16/fp16)
                grid = F.interpolate(
                    grid.float(),
                    size=(resolution, resolution),
                    mode="bilinear",
                    align_corners=False,
                    antialias=side > resolution,
                ).to(grid.dtype)
            grids.append(grid)
        return torch.stack(grids).mean(dim=0)


def restore_default_processors(unet: torch.nn.Module) -> None:
    """Back to diffusers' fused processors everywhere (drops trained copies)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())


def __getattr__(name: str):
    # The processor class lives in clic.attention_processor (it imports diffusers); its old address still works.
    if name == "ConceptAttnProcessor":
        from .attention_processor import ConceptAttnProcessor

        return ConceptAttnProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
