"""Deliberately broken loss terms, for the regression gate only (issue 29 stage 6): never in a preset.

A suite names one with ``fn`` in place of a registered term (:func:`clic.losses.resolve_term`), e.g.
``--set 'methods[0].learn.terms.att={fn: "broken_losses:att_sign_flipped", needs: [context, attention],
weight: 0.5, resize: antialias}'``; this folder is on the workers' ``PYTHONPATH`` in the tests (tests/plugins.py).
"""

from __future__ import annotations

import torch

from clic.losses import StepTensors, attention_loss

ATT_SIGN_FLIPPED = "broken_losses:att_sign_flipped"


def att_sign_flipped(s: StepTensors, resize: str = "area", sum_tokens: bool = False) -> torch.Tensor:
    """−l_att: gradient descent on it pushes the token's attention *away* from the concept's mask."""
    return -attention_loss(s.attention, s.attention_masks, resize, sum_tokens)
