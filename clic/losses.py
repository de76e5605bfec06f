"""Loss functions (pure) and the term registry that turns a config into an objective.

Every loss is a mean over elements, as diffusers' training scripts use ``F.mse_loss``:

* l_con  = mean((M_soft ⊙ (ε_θ(x_t, c, t) − ε))²),  M_soft = α + (1 − α)·M   (paper Eq. 3)
* l_att  = mean((CA_θ(v*, x_t) − Resize(M))²)                                (paper Eq. 4)
* l_RoI  = mean((ε_θ(M ⊙ x_t, c*, t) − ε)²)                                  (paper Eq. 5)
* plain diffusion = mean((ε_θ − ε)²); masked diffusion = mean((M ⊙ (ε_θ − ε))²) (Break-A-Scene)

An objective is a weighted sum of named terms: ``{"con": {"weight": 1, "alpha": 0.5}, "att": 0.5}``.
A term is a function ``(StepTensors, **params) -> Tensor`` registered here with :func:`register_term`,
or named by a dotted path ``"package.module:function"`` in a config, so ablations (a weight of 0 or a
missing key) and new terms are configuration. A term declares the branches it needs, so the training
step only runs the UNet passes and attention capture that some active term reads.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------ pure losses


def soft_mask(mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """M_soft = α + (1 − α)·M: weight 1 inside the region, α outside."""
    return alpha + (1.0 - alpha) * mask


def context_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """l_con: the denoising error weighted by the soft mask (mask broadcast over channels)."""
    return ((soft_mask(mask, alpha) * (eps_pred - eps)) ** 2).mean()


def attention_loss(attn_map: torch.Tensor, mask: torch.Tensor, resize: str = "area") -> torch.Tensor:
    """l_att: squared error between the token's attention map and the mask resized to the map.

    ``resize="area"`` (CLiC) gives a soft target at coarse resolutions; ``"nearest"`` is Break-A-Scene's.
    """
    target = resize_mask(mask, attn_map.shape[-2:], mode=resize)
    return ((attn_map - target) ** 2).mean()


def roi_loss(eps_pred_roi: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """l_RoI: plain denoising error of the RoI branch (its input x_t was already multiplied by M)."""
    return F.mse_loss(eps_pred_roi, eps)


def diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(eps_pred, eps)


def masked_diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Break-A-Scene's masked loss: only the region's error counts (mean over all elements)."""
    return ((mask * (eps_pred - eps)) ** 2).mean()


def resize_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size, mode: str = "area") -> torch.Tensor:
    """Resize a (B, 1|n, H, W) mask: ``area`` averaging (soft at coarse resolutions) or ``nearest``."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode=mode)


# ------------------------------------------------------------------------------------ the objective


@dataclass
class StepTensors:
    """What one training step exposes to loss terms. Absent branches are None."""

    noise: torch.Tensor  # ε, (B, 4, h, w)
    mask: torch.Tensor  # region mask at latent resolution, (B, 1, h, w)
    eps_context: torch.Tensor | None = None  # ε_θ(x_t, c, t)
    eps_roi: torch.Tensor | None = None  # ε_θ(M ⊙ x_t, c*, t)
    attention: torch.Tensor | None = None  # (B, n_tokens, r, r) token maps of the context branch
    attention_masks: torch.Tensor | None = None  # (B, n_tokens, H, W) one target mask per token
    extras: dict[str, Any] = field(default_factory=dict)


# The UNet passes a term may need: the shared step computes these; a method whose own training step computes
# another (SingleInsert's "semantic") registers it with register_branch.
BRANCHES: set[str] = {"context", "roi", "attention"}


def register_branch(name: str) -> None:
    BRANCHES.add(name)


class LossTermError(ValueError):
    """A loss term or objective that cannot be built (unknown term or needs, bad fn, no non-zero weight)."""


@dataclass(frozen=True)
class LossTerm:
    fn: Callable[..., torch.Tensor]
    needs: frozenset[str]  # subset of BRANCHES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.needs) - BRANCHES)
        if unknown:  # a misspelt branch would silently never run, and the term would read a missing tensor
            raise LossTermError(f"loss term {getattr(self.fn, '__name__', self.fn)!r}: unknown needs {unknown} "
                             f"(known: {', '.join(sorted(BRANCHES))})")


TERMS: dict[str, LossTerm] = {}


def register_term(name: str, needs: set[str] | frozenset[str]) -> Callable:
    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        TERMS[name] = LossTerm(fn, frozenset(needs))
        return fn

    return decorate


@register_term("con", {"context"})
def _con(s: StepTensors, alpha: float = 0.5) -> torch.Tensor:
    return context_loss(s.eps_context, s.noise, s.mask, alpha)


@register_term("att", {"context", "attention"})
def _att(s: StepTensors, resize: str = "area") -> torch.Tensor:
    return attention_loss(s.attention, s.attention_masks, resize)


@register_term("roi", {"roi"})
def _roi(s: StepTensors) -> torch.Tensor:
    return roi_loss(s.eps_roi, s.noise.expand_as(s.eps_roi))


@register_term("diffusion", {"context"})
def _diffusion(s: StepTensors) -> torch.Tensor:
    return diffusion_loss(s.eps_context, s.noise)


@register_term("masked_diffusion", {"context"})
def _masked(s: StepTensors) -> torch.Tensor:
    return masked_diffusion_loss(s.eps_context, s.noise, s.mask)


def resolve_term(name: str, spec: Mapping[str, Any]) -> LossTerm:
    """A registered term, or ``spec["fn"] = "pkg.module:function"`` (its ``needs`` from ``spec``)."""
    target = spec.get("fn")
    if target is None:
        if name not in TERMS:
            raise LossTermError(f"unknown loss term {name!r}; registered: {', '.join(sorted(TERMS))}")
        return TERMS[name]
    module_name, _, attr = str(target).partition(":")
    if not attr:
        raise LossTermError(f"loss term {name!r}: fn must be 'package.module:function', got {target!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise LossTermError(f"loss term {name!r}: cannot load fn {target!r} ({type(error).__name__}: {error})") from None
    needs = spec.get("needs", ("context",))
    return LossTerm(fn, frozenset([needs] if isinstance(needs, str) else needs))


class Objective:
    """Σ weight_k · term_k(step) over the terms whose weight is non-zero."""

    def __init__(self, terms: Mapping[str, float | Mapping[str, Any]]) -> None:
        self.terms: dict[str, tuple[LossTerm, float, dict[str, Any]]] = {}
        for name, spec in terms.items():
            spec = {"weight": spec} if isinstance(spec, (int, float)) else dict(spec)
            weight = float(spec.pop("weight", 1.0))
            if weight == 0.0:
                continue
            term = resolve_term(name, spec)
            params = {k: v for k, v in spec.items() if k not in ("fn", "needs")}
            self.terms[name] = (term, weight, params)
        if not self.terms:
            raise LossTermError("the objective has no term with a non-zero weight")

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(term.needs for term, _, _ in self.terms.values()))

    def __call__(self, step: StepTensors) -> tuple[torch.Tensor, dict[str, float]]:
        total = None
        values: dict[str, float] = {}
        for name, (term, weight, params) in self.terms.items():
            value = term.fn(step, **params)
            values[name] = float(value.detach())
            total = weight * value if total is None else total + weight * value
        values["total"] = float(total.detach())
        return total, values
