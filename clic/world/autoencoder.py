"""Stage 2 of the tiny world: the autoencoder (the tiny VAE with 8 norm groups), its loss, its held-out PSNR gate
and the latent scale stored in its exported config."""

from __future__ import annotations

from pathlib import Path

import torch

from .data import WORLD_SEED, render_batch
from .stage import AUTOENCODER_GATE_PSNR, Stage, TrainSettings

EVAL_SCENES = 256  # held-out scenes of the autoencoder gate, and train scenes of the latent scale


def world_vae_config() -> dict:
    """The tiny preset's VAE (clic.tiny_models.TINY_VAE_CONFIG: same channels, blocks, 4 latent channels, 4x down) with
    8 GroupNorm groups instead of 32. With 32 groups on 32 channels every norm is an instance norm that removes each
    channel's spatial mean, which can carry no absolute colour (a scene's tint); groups of 4 channels, as SD's VAE
    has (32 groups on 128 channels), keep colour as differences between channels. This is the architecture's
    reason, not a measured gain: early in training both reconstruct in grey, at the same pace (32 held-out scenes,
    batch 8: 20.7 dB at step 380 with 32 groups, 21.0 dB at step 438 with 8; issue 29 report)."""
    from ..tiny_models import TINY_VAE_CONFIG

    return {**TINY_VAE_CONFIG, "norm_num_groups": 8}


def build_autoencoder(seed: int) -> torch.nn.Module:
    """The world's VAE architecture (:func:`world_vae_config`), freshly initialised from ``seed``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**world_vae_config())


def autoencoder_loss(
    vae: torch.nn.Module, images: torch.Tensor, generator: torch.Generator, kl_weight: float
) -> torch.Tensor:
    """Reconstruction MSE of a posterior sample (what PSNR measures) plus SD's tiny KL term."""
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=generator)
    reconstruction = vae.decode(latents).sample
    return torch.nn.functional.mse_loss(reconstruction, images) + kl_weight * posterior.kl().mean() / images[0].numel()


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured on the [0, 1] scale: 10 log10(1 / MSE)."""
    mse = (((reference - estimate.clamp(-1, 1)) / 2) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_autoencoder(vae: torch.nn.Module, count: int | None = None, seed: int = WORLD_SEED) -> dict:
    """Held-out reconstruction PSNR through the posterior mean (mean over ``count`` scenes, and the worst)."""
    count = count or EVAL_SCENES
    was_training = vae.training
    vae.eval()
    values = []
    for start in range(0, count, 32):
        images, _ = render_batch(start, min(32, count - start), "heldout", seed)
        images = torch.from_numpy(images)
        values.append(psnr(images, vae.decode(vae.encode(images).latent_dist.mode()).sample))
    vae.train(was_training)
    per_image = torch.cat(values)
    return {
        "heldout_psnr_db": round(float(per_image.mean()), 3),
        "heldout_psnr_min_db": round(float(per_image.min()), 3),
        "heldout_scenes": count,
        "gate_psnr_db": AUTOENCODER_GATE_PSNR,
        "passed": bool(per_image.mean() >= AUTOENCODER_GATE_PSNR),
    }


@torch.no_grad()
def latent_scaling_factor(vae: torch.nn.Module, count: int | None = None, seed: int = WORLD_SEED) -> float:
    """1 / std of the posterior means over ``count`` train scenes: SD's rule for ``scaling_factor`` (unit-variance
    latents for the diffusion model; LDM's ``scale_by_std``), stored in the exported VAE config."""
    count = count or EVAL_SCENES
    was_training = vae.training
    vae.eval()
    batches = (
        torch.from_numpy(render_batch(start, min(32, count - start), "train", seed)[0]) for start in range(0, count, 32)
    )
    means = [vae.encode(images).latent_dist.mean for images in batches]
    vae.train(was_training)
    return round(1.0 / float(torch.cat(means).std()), 5)


def _save_autoencoder(vae: torch.nn.Module, folder: Path) -> Path:
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae))
    return _save_diffusers(vae, folder)


def _autoencoder_step_loss(
    vae: torch.nn.Module, step: int, generator: torch.Generator, settings: TrainSettings
) -> torch.Tensor:
    images, _ = render_batch(step * settings.batch, settings.batch, "train", settings.seed)
    return autoencoder_loss(vae, torch.from_numpy(images), generator, settings.kl_weight)


def _save_diffusers(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder / "diffusion_pytorch_model.safetensors"


def autoencoder_stage() -> Stage:
    return Stage(
        build=lambda s: build_autoencoder(s.seed),
        loss=_autoencoder_step_loss,
        evaluate=lambda model, s: evaluate_autoencoder(model, seed=s.seed),
        save=_save_autoencoder,
    )
