"""Stage 4 of the tiny world: the tiny UNet and CLIP text encoder trained as a latent diffusion model.

The autoencoder of stage 2 is loaded from the shipped weights and frozen; images are encoded to posterior samples
scaled by its ``scaling_factor``. The loss is SD 1.x's: ε-prediction MSE at a uniformly drawn timestep of SD's
noise schedule (:data:`clic.models.SD_SCHEDULER_CONFIG`; Rombach et al. 2022, Eq. 2), and 10 % of the captions are
dropped to the empty prompt so that classifier-free guidance has an unconditional model (Ho & Salimans 2022, §3.2).

The gate (issue 29 stage 4: generated images show the prompted object class >= 70 % and pattern >= 40 %,
measured by the scorer and a classifier trained on renders) is not implemented yet; evaluation reports the
held-out denoising loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import render_batch

if TYPE_CHECKING:
    from .train import Stage, TrainSettings

CAPTION_DROPOUT = 0.1


class TextToImage(torch.nn.Module):
    """The two trained networks as one module (one state dict, one optimiser); the VAE rides along frozen."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module, vae: torch.nn.Module,
                 tokenizer) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self._frozen = (vae.requires_grad_(False).eval(), tokenizer)  # a tuple: not registered, not saved

    @property
    def vae(self) -> torch.nn.Module:
        return self._frozen[0]

    def state_dict(self, *args, **kwargs):  # the trained networks only
        return {**{f"unet.{k}": v for k, v in self.unet.state_dict().items()},
                **{f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()}}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        self.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        self.text_encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        tokenizer = self._frozen[1]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return self.text_encoder(ids)[0]


def world_unet_config() -> dict:
    """The tiny preset's UNet (:func:`clic.models.tiny_unet_config`: SD 1.x block types, cross-attention on the text
    encoder's 32-wide states) with 8 GroupNorm groups instead of 32, for the world VAE's reason
    (:func:`clic.world.train.world_vae_config`): 32 groups on 32 channels normalise each channel alone."""
    from ..models import tiny_unet_config

    return {**tiny_unet_config(4), "norm_num_groups": 8}


def build_text_to_image(seed: int, weights: Path | None = None) -> TextToImage:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models import TINY_TEXT_CONFIG, TINY_WORLD_WEIGHTS, ModelNotFoundError, _tiny_tokenizer

    folder = (weights or TINY_WORLD_WEIGHTS) / "autoencoder"
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"the unet stage needs the trained autoencoder at {folder}: "
                                 "train and export `--stage autoencoder` first")
    vae = AutoencoderKL.from_pretrained(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**world_unet_config())
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
    return TextToImage(unet, text_encoder, vae, _tiny_tokenizer())


def noise_schedule_alphas() -> torch.Tensor:
    """ᾱ_t of SD's scaled-linear schedule (betas linear in sqrt from 0.00085 to 0.012 over 1000 steps)."""
    from ..models import SD_SCHEDULER_CONFIG

    betas = torch.linspace(SD_SCHEDULER_CONFIG["beta_start"] ** 0.5, SD_SCHEDULER_CONFIG["beta_end"] ** 0.5,
                           SD_SCHEDULER_CONFIG["num_train_timesteps"], dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def denoising_loss(model: TextToImage, images: torch.Tensor, captions: list[str],
                   generator: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        posterior = model.vae.encode(images).latent_dist
        latents = posterior.sample(generator=generator) * model.vae.config.scaling_factor
    alphas = noise_schedule_alphas()
    timesteps = torch.randint(0, len(alphas), (len(images),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    alpha_bar = alphas[timesteps].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    dropped = torch.rand(len(captions), generator=generator) < CAPTION_DROPOUT
    prompts = ["" if drop else caption for caption, drop in zip(captions, dropped.tolist())]
    prediction = model.unet(noisy, timesteps, encoder_hidden_states=model.encode_text(prompts)).sample
    return torch.nn.functional.mse_loss(prediction, noise)


def _step_loss(model: TextToImage, step: int, generator: torch.Generator, settings: TrainSettings) -> torch.Tensor:
    images, captions = render_batch(step * settings.batch, settings.batch, "train", settings.seed)
    return denoising_loss(model, torch.from_numpy(images), captions, generator)


@torch.no_grad()
def evaluate_unet(model: TextToImage, settings: TrainSettings, count: int = 64) -> dict:
    images, captions = render_batch(0, count, "heldout", settings.seed)
    loss = denoising_loss(model, torch.from_numpy(images), captions, torch.Generator().manual_seed(settings.seed))
    return {"heldout_denoising_mse": round(float(loss), 5), "heldout_scenes": count,
            "gate": "not implemented: object >= 70 %, pattern >= 40 % of generated images (issue 29 stage 4)"}


def _save(model: TextToImage, folder: Path) -> Path:
    model.unet.save_pretrained(folder.parent / "unet", safe_serialization=True)
    model.text_encoder.save_pretrained(folder.parent / "text_encoder", safe_serialization=True)
    return folder.parent / "unet" / "diffusion_pytorch_model.safetensors"


def unet_stage() -> Stage:
    from .train import Stage

    return Stage(build=lambda s: build_text_to_image(s.seed), loss=_step_loss, evaluate=evaluate_unet, save=_save)
