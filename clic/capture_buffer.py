"""The buffer a set of capturing attention processors shares: token columns to record and the maps recorded.

Below both :mod:`clic.attention` (which creates it) and :mod:`clic.attention_processor` (which fills it), so
that neither imports the other back.
"""

from __future__ import annotations

import torch

__all__ = ["CaptureBuffer"]


class CaptureBuffer:
    """What one set of processors shares: the token columns to record and the maps recorded."""

    def __init__(self) -> None:
        self.token_positions: torch.Tensor | None = None  # (B, n) long
        self.maps: dict[str, torch.Tensor] = {}  # layer -> (B, pixels, n)
        self.enabled = True
        # "all": the maps average every head; "last_half": heads H//2… only, as ConceptExpress's released store
        # keeps attn[h // 2:] of its (batch·heads) stack (ptp_utils.py L137-140; its batch is 1)
        self.heads = "all"

    def clear(self) -> None:
        self.maps.clear()
