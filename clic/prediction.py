"""What the UNet predicts, read from the scheduler: the one place every method turns a model output into
a training target or an x̂₀ estimate.

``scheduler.config.prediction_type`` is ``epsilon`` (SD 1.x, SD 2.x base) or ``v_prediction`` (SD 2.x
768): the UNet outputs ε̂ or v̂ = √ᾱ_t ε − √(1−ᾱ_t) x₀. A loss that always compares against ε trains a
v-prediction model toward the wrong target while inference reads its output as v, so:

* :func:`training_target` — what the output should equal for clean latents x₀ and noise ε: ε, or
  ``scheduler.get_velocity(x₀, ε, t)`` (as diffusers' training scripts and the released CLiC
  ``learning.py`` L986-991 do);
* :func:`predicted_x0` — x̂₀ from x_t and the output, for either type;
* :func:`predicted_noise` — ε̂ from x_t and the output, for either type.

An unknown type is one :class:`ValueError` line naming it. DDIM's ``step`` reads the type itself, so
sampling loops need nothing beyond :func:`check_prediction_type` up front.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(scheduler) -> str:
    """The scheduler's prediction type, or a one-line error if this library does not handle it."""
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unsupported scheduler prediction_type {kind!r}; supported: {', '.join(PREDICTION_TYPES)}")
    return kind


def _alpha_bar(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(like.device)[timesteps.to(like.device).long()].to(like.dtype)
    return alphas.reshape(-1, *([1] * (like.dim() - 1)))


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet output should equal for x_t = add_noise(x0, noise, t): ε or v."""
    if check_prediction_type(scheduler) == "epsilon":
        return noise
    return scheduler.get_velocity(x0, noise, timesteps.expand(x0.shape[0]) if timesteps.numel() == 1 else timesteps)


def predicted_x0(scheduler, x_t: torch.Tensor, output: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x̂₀ = (x_t − √(1−ᾱ) ε̂)/√ᾱ (epsilon) or √ᾱ x_t − √(1−ᾱ) v̂ (v_prediction), ᾱ per batch row."""
    alpha_bar = _alpha_bar(scheduler, timesteps, x_t)
    if check_prediction_type(scheduler) == "epsilon":
        return (x_t - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * output


def predicted_noise(scheduler, x_t: torch.Tensor, output: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """ε̂: the output itself (epsilon) or √(1−ᾱ) x_t + √ᾱ v̂ (v_prediction)."""
    if check_prediction_type(scheduler) == "epsilon":
        return output
    alpha_bar = _alpha_bar(scheduler, timesteps, x_t)
    return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * output
