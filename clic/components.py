"""The Stable Diffusion components every loop works on (:class:`SDComponents`), and the names of the built-in models.

The bottom of the model layer: :mod:`clic.tiny_models`, :mod:`clic.tiny_world`, :mod:`clic.architectures`,
:mod:`clic.checkpoints` and :mod:`clic.models` (the loaders) all build or return these, and none of them is
imported here. diffusers and transformers are imported where a model is built or loaded, not here: importing
diffusers imports every model class it ships and torch._dynamo (seconds), which planning a run, preflight and the
metric actor never need (tests/harness/test_lazy_imports.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Must precede any import of huggingface_hub (diffusers/transformers import it): otherwise a missing
# model retries against an unreachable hub for ~47 s. Users who do have a hub set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import TYPE_CHECKING  # noqa: E402

import torch  # noqa: E402

from . import TINY_RANDOM  # noqa: E402

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

TINY_PRESETS = ("tiny", "tiny-inpaint", "tiny-v")
TINY_LABEL = TINY_RANDOM  # the label of the seeded tiny models (clic.TINY_RANDOM)
# The tiny architectures with weights trained on the synthetic scenes (clic.world, `clic models train-world`),
# loaded by clic.tiny_world.
TINY_WORLD = "tiny-world"
WORLD_TRAINED = "trained on the synthetic sets; not a real model"  # what every tiny-world weights label says
TINY_WORLD_LABEL = f"{TINY_WORLD}: {WORLD_TRAINED}"


class ModelNotFoundError(FileNotFoundError):
    """The requested weights are not on this machine; the message says how to get them."""


@dataclass
class SDComponents:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDIMScheduler
    model_id: str  # "tiny", a folder path or an HF id
    weights_hash: str  # identifies the weights (see :func:`weights_fingerprint`)
    resolution: int  # native image side in pixels
    label: str | None = None  # the weights label a folder's provenance marker gives (None: the model id)

    @property
    def is_tiny(self) -> bool:
        return self.model_id in TINY_PRESETS

    @property
    def weights_label(self) -> str:
        """What made the numbers: ``tiny-random``, the tiny-world label, a saved random build's label, or the
        model id."""
        if self.model_id == TINY_WORLD:
            return TINY_WORLD_LABEL
        return TINY_LABEL if self.is_tiny else (self.label or self.model_id)

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels == 9

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDComponents:
        """Move (and cast) the three networks in place, once; the scheduler's tables follow on use.

        In fp16 a VAE whose config says ``force_upcast`` (SD 1.x/2.x: their VAEs overflow in fp16) stays fp32;
        the loops cast at the VAE boundary.
        """
        # nn.Module.to: diffusers' own override warns about every cast of a whole model.
        for module in (self.text_encoder, self.unet):
            torch.nn.Module.to(module, device=device, dtype=dtype)
        _cast_inputs_at_the_boundary(self.unet)
        keep_fp32 = dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        torch.nn.Module.to(self.vae, device=device, dtype=torch.float32 if keep_fp32 else dtype)
        return self

    def freeze(self) -> SDComponents:
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
        return self


def _cast_to(dtype: torch.dtype, value):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _cast_inputs_at_the_boundary(unet: torch.nn.Module) -> None:
    """Float inputs of the UNet meet its dtype at its boundary: the loops keep latents in fp32 and every caller
    (each method's own loop included) can pass them as they are to a half-precision UNet."""
    if getattr(unet, "_clic_casts_inputs", False):
        return

    def cast(module, args, kwargs):
        dtype = module.dtype
        # the sample (first positional) only: a float timestep must not be rounded to bf16 (999 -> 1000)
        return (
            tuple(_cast_to(dtype, a) if i == 0 else a for i, a in enumerate(args)),
            {k: (_cast_to(dtype, v) if k in ("sample", "encoder_hidden_states") else v) for k, v in kwargs.items()},
        )

    unet.register_forward_pre_hook(cast, with_kwargs=True)
    unet._clic_casts_inputs = True


def ddim_scheduler(components: SDComponents) -> DDIMScheduler:
    """A new DDIM scheduler with the model's noise schedule and prediction type: a checkpoint's own scheduler
    (e.g. SD 1.5's PNDM) becomes DDIM, which transfer, generation and matching step with."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(components.scheduler.config)


def sd_pipeline(components: SDComponents, scheduler=None):
    """diffusers' ``StableDiffusionPipeline`` on the components (no safety checker, no progress bar), stepped by
    ``scheduler`` or else :func:`ddim_scheduler`: what the project generates with and writes model folders as."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler if scheduler is not None else ddim_scheduler(components),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@dataclass(frozen=True)
class ModelDescription:
    model_id: str
    weights_hash: str
    weights_label: str  # "tiny-random" or the model id
    resolution: int  # native image side
