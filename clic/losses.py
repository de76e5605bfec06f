"""Loss functions (pure) and the term registry that turns a config into an objective.

Two families of forms. The paper's (CLiC §3.1; every loss a mean over elements, as diffusers' training
scripts use ``F.mse_loss``; y is the training target, ε or v, see :mod:`clic.prediction`):

* l_att  = mean((CA_θ(v*, x_t) − Resize(M))²)                                  Eq. (1)
* M_soft = α + (1 − α)·M, α = 0.5                                               Eq. (2)
* l_con  = mean((M_soft ⊙ (ε_θ(x_t, c, t) − y))²)                               Eq. (3)
* l_RoI  = mean((ε_θ(M ⊙ x_t, c*, t) − y)²)                                     Eq. (4)
* total  = l_con + λ (l_att + l_RoI), λ = 0.5                                   Eq. (5)
* plain diffusion = mean((ε_θ − y)²); masked diffusion = mean((M ⊙ (ε_θ − y))²) (Break-A-Scene)

and the released code's (github Mehdi0xC/clic ``learning.py``), where a weight multiplies the *squared*
error and the sum is normalised by the weight's own sum over one channel:

* l_con  = Σ(W ⊙ (ε_θ − y)²) / ΣW,  W = M_64 where M_64 ≥ 0.05, else 0.25, times the valid region
  (L107-115, L1002-1004)
* l_RoI  = Σ(M_64 ⊙ (ε_θ(x_t^RoI, c*, t) − y)²) / ΣM_64  (L1008-1010)

M_64 is the mask bilinearly resized (no antialiasing) to the latent grid (64×64 at 512 px, L107).

An objective is a weighted sum of named terms: ``{"con": {"weight": 1, "alpha": 0.5}, "att": 0.5}``.
A term is a function ``(StepTensors, **params) -> Tensor`` registered here with :func:`register_term`,
or named by a dotted path ``"package.module:function"`` in a config, so ablations (a weight of 0 or a
missing key) and new terms are configuration. A term declares the branches it needs, so the training
step only runs the UNet passes and attention capture that some active term reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------ pure losses


def soft_mask(mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """M_soft = α + (1 − α)·M (CLiC Eq. (2)): weight 1 inside the region, α outside."""
    return alpha + (1.0 - alpha) * mask


def context_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """l_con: the denoising error weighted by the soft mask (mask broadcast over channels)."""
    return ((soft_mask(mask, alpha) * (eps_pred - eps)) ** 2).mean()


def attention_loss(
    attn_map: torch.Tensor, mask: torch.Tensor, resize: str = "area", sum_tokens: bool = False
) -> torch.Tensor:
    """l_att: squared error between the token's attention map and the mask resized to the map.

    ``resize``: ``"antialias"`` (CLiC paper preset: the same antialiased bilinear filter the maps get),
    ``"area"``, ``"bilinear"`` (released CLiC code, learning.py L107) or ``"nearest"`` (Break-A-Scene).
    ``sum_tokens``: Σ over the (B, k) token maps of each map's mean squared error, averaged over the batch
    (Break-A-Scene's train.py adds one ``F.mse_loss`` per sampled token); otherwise the mean over every element
    (CLiC, one token).
    """
    target = resize_mask(mask, attn_map.shape[-2:], mode=resize)
    squared = (attn_map - target) ** 2
    if sum_tokens:
        return squared.mean(dim=(-2, -1)).sum(dim=1).mean()
    return squared.mean()


def roi_loss(eps_pred_roi: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """l_RoI: plain denoising error of the RoI branch (its input x_t was already multiplied by M)."""
    return F.mse_loss(eps_pred_roi, eps)


def diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(eps_pred, eps)


def masked_diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Break-A-Scene's masked loss: only the region's error counts (mean over all elements)."""
    return ((mask * (eps_pred - eps)) ** 2).mean()


RESIZE_MODES = ("area", "nearest", "bilinear", "antialias")


def resize_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size, mode: str = "area") -> torch.Tensor:
    """Resize a (B, 1|n, H, W) mask: ``area`` averaging (soft at coarse resolutions), ``nearest``,
    ``bilinear`` (no antialiasing, as ``F.interpolate``'s default) or ``antialias`` (bilinear, antialiased)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown mask resize mode {mode!r}; known: {', '.join(RESIZE_MODES)}")
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if mode in ("bilinear", "antialias"):
        return F.interpolate(
            mask.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=mode == "antialias"
        ).to(mask.dtype)
    return F.interpolate(mask, size=tuple(size), mode=mode)


def released_context_weight(
    mask: torch.Tensor,
    size: tuple[int, int] | torch.Size,
    outside: float = 0.25,
    threshold: float = 0.05,
    border: int = 1,
) -> torch.Tensor:
    """The released code's l_con weight W on the latent grid, from a (B, 1, H, W) pixel mask.

    Bilinear resize (learning.py L107), cells below ``threshold`` set to ``outside`` (L113) — the mask
    value elsewhere — times the valid-region mask, which under ``--noaug`` is 1 on cells [1, h−1) and 0 on
    the outer ring (learning.py L222, L230-232 with scale = size; L115).
    """
    weight = resize_mask(mask, size, "bilinear")
    weight = torch.where(weight < threshold, torch.full_like(weight, outside), weight)
    if border > 0:
        valid = torch.zeros_like(weight)
        valid[..., border:-border, border:-border] = 1
        weight = weight * valid
    return weight


def weight_normalised_error(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_c,h,w W ⊙ (pred − target)² / (Σ_h,w W + 1e-10) per row, averaged over rows (learning.py L1004):
    the error sums over the latent channels, the weight over its single channel."""
    error = (pred - target) ** 2 * weight
    return (error.sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) + 1e-10)).mean()


# ------------------------------------------------------------------------------------ the objective


@dataclass
class StepTensors:
    """What one training step exposes to loss terms. Absent branches are None."""

    noise: torch.Tensor  # ε, (B, 4, h, w)
    mask: torch.Tensor  # region mask at latent resolution, (B, 1, h, w)
    # What the UNet output should equal (clic.prediction.training_target): ε, or v on a v-prediction model.
    # None means ε, for steps written before prediction types were read.
    target: torch.Tensor | None = None
    roi_target: torch.Tensor | None = None  # the RoI rows' own targets (their clean latents differ)
    eps_context: torch.Tensor | None = None  # ε_θ(x_t, c, t)
    eps_roi: torch.Tensor | None = None  # ε_θ(M ⊙ x_t, c*, t)
    attention: torch.Tensor | None = None  # (B, n_tokens, r, r) token maps of the context branch
    attention_masks: torch.Tensor | None = None  # (B, n_tokens, H, W) one target mask per token
    valid: torch.Tensor | None = None  # (B, 1, h, w) latent pixels showing the image (zoom-out padding is 0)
    pixel_masks: torch.Tensor | None = None  # (n_tokens, H, W) the step's (augmented) pixel masks
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = self.noise


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
            raise LossTermError(
                f"loss term {getattr(self.fn, '__name__', self.fn)!r}: unknown needs {unknown} "
                f"(known: {', '.join(sorted(BRANCHES))})"
            )


TERMS: dict[str, LossTerm] = {}


def register_term(name: str, needs: set[str] | frozenset[str]) -> Callable:
    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        TERMS[name] = LossTerm(fn, frozenset(needs))
        return fn

    return decorate


@register_term("con", {"context"})
def _con(
    s: StepTensors,
    alpha: float = 0.5,
    form: str = "paper",
    outside: float = 0.25,
    threshold: float = 0.05,
    border: int = 1,
) -> torch.Tensor:
    """``form="paper"``: mean((M_soft ⊙ error)²) with α; ``"released"``: the weight-normalised form."""
    if form == "released":
        weight = released_context_weight(
            s.pixel_masks.amax(dim=0)[None, None], s.eps_context.shape[-2:], outside, threshold, border
        )
        return weight_normalised_error(s.eps_context, s.target, weight)
    _check_form(form)
    return context_loss(s.eps_context, s.target, s.mask, alpha)


@register_term("att", {"context", "attention"})
def _att(s: StepTensors, resize: str = "area", sum_tokens: bool = False) -> torch.Tensor:
    return attention_loss(s.attention, s.attention_masks, resize, sum_tokens)


@register_term("roi", {"roi"})
def _roi(s: StepTensors, form: str = "paper") -> torch.Tensor:
    """``form="paper"``: plain mean squared error; ``"released"``: weighted by the bilinear mask, normalised."""
    target = s.roi_target if s.roi_target is not None else s.target.expand_as(s.eps_roi)
    if form == "released":  # one row per token, each weighted by its own mask
        return weight_normalised_error(
            s.eps_roi, target, resize_mask(s.pixel_masks[:, None], s.eps_roi.shape[-2:], "bilinear")
        )
    _check_form(form)
    return roi_loss(s.eps_roi, target)


def _check_form(form: str) -> None:
    if form not in ("paper", "released"):
        raise ValueError(f"loss form must be 'paper' or 'released', got {form!r}")


@register_term("diffusion", {"context"})
def _diffusion(s: StepTensors) -> torch.Tensor:
    return diffusion_loss(s.eps_context, s.target)


@register_term("masked_diffusion", {"context"})
def _masked(s: StepTensors) -> torch.Tensor:
    return masked_diffusion_loss(s.eps_context, s.target, s.mask)


@register_term("region_diffusion", {"context"})
def _region(s: StepTensors) -> torch.Tensor:
    """Custom Diffusion's loss over the image region (diffusers examples/custom_diffusion/train_custom_diffusion.py:
    ``((mse * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()`` with a one-channel mask, a zoom-out's padding 0)."""
    region = s.valid if s.valid is not None else torch.ones_like(s.noise[:, :1])
    return weight_normalised_error(s.eps_context, s.target, region)


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
        raise LossTermError(
            f"loss term {name!r}: cannot load fn {target!r} ({type(error).__name__}: {error})"
        ) from None
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
