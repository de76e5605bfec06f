"""The exact Stable Diffusion 1.5 and 2.1 (768-v) architectures with random weights, built locally.

``clic models save-random --arch sd15|sd21 DIR`` writes a stock diffusers folder with these configs, so the real
layer structure (16 cross-attention layers, 64×64 / 96×96 native latents, OpenCLIP-H's 23-layer text encoder,
``upcast_attention`` and linear projections on SD 2.1, "!" padding) can be exercised without downloading
anything. The numbers they produce mean nothing; the shapes, layer names, memory and speed are the real ones.

Sources (the ``config.json`` files of the hub folders, copied as values, not code):
* SD 1.5: runwayml/stable-diffusion-v1-5 ``unet/``, ``vae/``, ``text_encoder/`` (CLIP ViT-L/14 text tower),
  ``tokenizer/`` (pad ``<|endoftext|>``); the scheduler is DDIM with SD's training betas, ε-prediction.
* SD 2.1: stabilityai/stable-diffusion-2-1 ``unet/`` (attention_head_dim [5, 10, 20, 20], cross_attention_dim
  1024, use_linear_projection, upcast_attention, sample_size 96), ``text_encoder/`` (OpenCLIP ViT-H/14 text
  tower up to its penultimate layer: 23 layers, width 1024, GELU), ``tokenizer/`` (pad ``!``), ``scheduler/``
  (DDIM, v-prediction), VAE as SD 1.x with sample_size 768.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import RANDOM_WEIGHTS
from .components import SDComponents, sd_pipeline
from .tiny_models import SD_SCHEDULER_CONFIG, build_clip_tokenizer

_SD_UNET_COMMON = {
    "act_fn": "silu",
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}

_SD_VAE_COMMON = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}

_CLIP_TEXT_COMMON = {
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-05,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
}


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict
    pad_token: str

    @property
    def resolution(self) -> int:
        return int(self.unet["sample_size"]) * 2 ** (len(self.vae["block_out_channels"]) - 1)


ARCHITECTURES: dict[str, Architecture] = {
    "sd15": Architecture(
        name="sd15",
        description="Stable Diffusion 1.5 (512 px, CLIP ViT-L/14 text encoder, ε-prediction)",
        unet={**_SD_UNET_COMMON, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64},
        vae={**_SD_VAE_COMMON, "sample_size": 512},
        text_encoder={
            **_CLIP_TEXT_COMMON,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
        scheduler=dict(SD_SCHEDULER_CONFIG),
        pad_token="<|endoftext|>",
    ),
    "sd21": Architecture(
        name="sd21",
        description="Stable Diffusion 2.1 768-v (768 px, OpenCLIP ViT-H/14 text encoder, v-prediction)",
        unet={
            **_SD_UNET_COMMON,
            "attention_head_dim": (5, 10, 20, 20),
            "cross_attention_dim": 1024,
            "sample_size": 96,
            "use_linear_projection": True,
            "upcast_attention": True,
            "dual_cross_attention": False,
        },
        vae={**_SD_VAE_COMMON, "sample_size": 768},
        text_encoder={
            **_CLIP_TEXT_COMMON,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
        scheduler={**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"},
        pad_token="!",
    ),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_random(name: str, tokenizer_dir: str | Path, seed: int = 0) -> SDComponents:
    """The architecture with seeded random weights (fp32, CPU); its tokenizer files go to ``tokenizer_dir``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = architecture(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**arch.unet)
        vae = AutoencoderKL(**arch.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
    return SDComponents(
        tokenizer=build_clip_tokenizer(tokenizer_dir, pad_token=arch.pad_token),
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler=DDIMScheduler(**arch.scheduler),
        model_id=f"random-{name}",
        weights_hash="",
        resolution=arch.resolution,
    ).freeze()


def save_random(name: str, directory: str | Path, seed: int = 0) -> Path:
    """Write the architecture with random weights as a stock diffusers ``StableDiffusionPipeline`` folder."""
    directory = Path(directory)
    components = build_random(name, directory / "tokenizer", seed)
    sd_pipeline(components, scheduler=components.scheduler).save_pretrained(directory)
    from .provenance import write_weights_marker

    write_weights_marker(
        directory, f"{RANDOM_WEIGHTS} ({name})", f"clic models save-random --arch {name} --seed {seed}"
    )
    return directory
