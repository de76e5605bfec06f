"""One optimiser step of a learning loop, the one copy every method's loop uses: the optimiser's kind, zeroing,
gradient accumulation, the non-finite-loss check, fp16 loss scaling, gradient-norm clipping and the update.

:func:`clic.learn.learn_concept` (every method on the shared loop), SingleInsert's two stages and ConceptExpress's
two phases all step through :class:`OptimizerStep`, so a rule about stepping (what is clipped, how accumulated
losses are scaled, which loss is refused) is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW"}  # name -> torch.optim class, looked up when called


def make_optimizer(kind: str, params: Iterable[Any], **defaults: Any) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` or ``AdamW`` over ``params`` (tensors or parameter groups)."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; known: {', '.join(OPTIMIZERS)}")
    return getattr(torch.optim, OPTIMIZERS[kind])(params, **defaults)


@dataclass
class OptimizerStep:
    """Steps ``optimizer``: ``accumulation`` micro-steps' losses (each divided by the count, as accelerate's
    ``accumulate()``), then ``clipped``'s gradient norm clipped to ``max_grad_norm`` (0: no clipping), then the
    update. ``scaler``: a ``torch.amp.GradScaler`` for fp16 autocast (None, or a disabled one: plain steps)."""

    optimizer: torch.optim.Optimizer
    clipped: Sequence[torch.nn.Parameter] = ()
    max_grad_norm: float = 0.0
    accumulation: int = 1
    scaler: torch.amp.GradScaler | None = None

    def __call__(
        self, micro_step: Callable[[int], torch.Tensor], where: str, after_backward: Callable[[int], None] | None = None
    ) -> None:
        """``micro_step(i)`` returns micro-step i's loss; ``where`` names the step in the error a non-finite loss
        raises; ``after_backward(i)`` runs once its gradients are in (logging)."""
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(self.accumulation):
            loss = micro_step(micro)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss.detach())} at {where}")
            scaled = loss if self.accumulation == 1 else loss / self.accumulation
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if after_backward is not None:
                after_backward(micro)
        if self.max_grad_norm > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.clipped, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
