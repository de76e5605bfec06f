"""Small inputs shared by the method tests (imported by name: pytest puts this folder on sys.path).

Imports clic only: tests/clic use it and must never import harness or Ray."""

from __future__ import annotations

import torch

from clic.learn import ConceptSource


def square_mask(top: int, left: int, size: int, side: int = 64) -> torch.Tensor:
    mask = torch.zeros(side, side)
    mask[top : top + size, left : left + size] = 1
    return mask


def random_source(seed: int, side: int = 64) -> ConceptSource:
    """A seeded random 'chair' image in [-1, 1] with a square concept mask."""
    generator = torch.Generator().manual_seed(seed)
    return ConceptSource(torch.rand(3, side, side, generator=generator) * 2 - 1, square_mask(8, 16, 32, side), "chair")


def last_json_line(stdout: str) -> dict:
    """The report a subprocess printed last; Ray's log monitor may print its own lines to stdout too."""
    import json

    return json.loads(next(line for line in reversed(stdout.strip().splitlines()) if line.startswith("{")))


def unet_with_token_maps(
    components,
    x: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    positions: list[int],
    blocks: tuple[str, ...] = ("up_blocks", "down_blocks", "mid_block"),
    detach_outputs: bool = False,
):
    """The UNet's output and, for every cross-attention layer (attn2) in ``blocks``, the head-averaged
    softmax(QKᵀ/√d) columns of ``positions`` for batch row 0, as (n, side, side): computed here from the layer's
    recorded inputs and its Q/K weights (a processor's trained copies when it has them), not from the capture.
    ``detach_outputs``: every attention layer's output detached (the released CLiC att_processor L138-140)."""
    import math

    from diffusers.models.attention_processor import Attention

    modules = dict(components.unet.named_modules())
    inputs, handles = {}, []
    for name, module in modules.items():
        if isinstance(module, Attention) and detach_outputs:
            handles.append(module.register_forward_hook(lambda _m, _i, out: out.detach()))
        if isinstance(module, Attention) and name.endswith("attn2") and name.startswith(blocks):

            def record(_m, args, kwargs, name=name):
                inputs[name] = (args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"])

            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    try:
        out = components.unet(x, t, encoder_hidden_states=text).sample
    finally:
        for handle in handles:
            handle.remove()
    maps = {}
    for name, (hidden, context) in inputs.items():
        attn, proc = modules[name], modules[name].processor
        q = proc.to_q_custom_diffusion(hidden) if getattr(proc, "train_q_out", False) else attn.to_q(hidden)
        k = proc.to_k_custom_diffusion(context) if getattr(proc, "train_kv", False) else attn.to_k(context)
        heads = attn.heads
        d = q.shape[-1] // heads
        q = q.view(q.shape[0], -1, heads, d).transpose(1, 2)
        k = k.view(k.shape[0], -1, heads, d).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1).mean(1)[0][:, positions]  # (P, n)
        side = math.isqrt(probs.shape[0])
        maps[name] = probs.T.reshape(len(positions), side, side)
    return out, maps
