"""What SingleInsert adds to the model and how it scores a step: its loss terms (registered as ``si_fg``,
``si_bg``, ``si_sm``), its config, the image encoder whose output is the token, and the LoRA adapters of stage II.

Part of :mod:`clic.methods.single_insert` (the method, its presets and their sources), which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..components import SDComponents
from ..concept import LearnedConcept
from ..losses import Objective, StepTensors, register_branch, register_term
from ..settings import MethodConfig

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save/load_lora_weights use
LORA_PREFIX = "lora/"  # LoRA tensors inside LearnedConcept.arrays
ADAPTER = "single_insert"
TINY_ENCODER = {
    "image_size": 64,
    "patch_size": 8,
    "width": 64,
    "layers": 2,
    "heads": 2,
    "mlp_ratio": 4.0,
    "output_dim": 32,
}
TINY_ENCODER_SEED = 0


# ------------------------------------------------------------------------------------ the losses
def foreground_loss(x0_pred: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_fg = mean(m_f ⊙ (x̂₀ − x₀)²)."""
    return (mask * (x0_pred - x0) ** 2).mean()


def background_loss(x0_pred: torch.Tensor, x0_class: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_bg = mean((1 − m_f) ⊙ (x̂₀ − x̄₀)²); x̄₀ is a constant (frozen model, class prompt)."""
    return ((1 - mask) * (x0_pred - x0_class.detach()) ** 2).mean()


def semantic_loss(x0_adapted: torch.Tensor, x0_frozen: torch.Tensor) -> torch.Tensor:
    """L_sm = mean((x̂₀(adapted) − x̂₀(frozen))²) on the class prompt."""
    return F.mse_loss(x0_adapted, x0_frozen.detach())


# The step puts x̂₀ (token prompt), x₀, x̄₀ and, in stage II, x̂₀ (adapted, class prompt) in ``extras``.
@register_term("si_fg", {"context"})
def _si_fg(s: StepTensors) -> torch.Tensor:
    return foreground_loss(s.extras["x0_pred"], s.extras["x0"], s.mask)


@register_term("si_bg", {"context"})
def _si_bg(s: StepTensors) -> torch.Tensor:
    return background_loss(s.extras["x0_pred"], s.extras["x0_class"], s.mask)


register_branch("semantic")  # computed by SingleInsert's own training step (below)


@register_term("si_sm", {"semantic"})
def _si_sm(s: StepTensors) -> torch.Tensor:
    return semantic_loss(s.extras["x0_adapted_class"], s.extras["x0_class"])


# ---------------------------------------------------------------------------------- the config
@dataclass(frozen=True)
class SingleInsertConfig(MethodConfig):
    """Everything that determines a SingleInsert run (``learn:`` keys of a suite)."""

    stage_one_steps: int = 50  # SingleInsert §4.1: 50 iterations
    stage_one_lr: float = 1e-4  # §4.1: 1e-4
    stage_one_batch_size: int = 16  # §4.1: batch 16
    stage_two_steps: int = 100  # §4.1: 100 iterations
    stage_two_lr: float = 5e-5  # §4.1: 5e-5 (encoder and LoRA)
    stage_two_batch_size: int = 4  # §4.1: batch 4
    lora_rank: int = 4
    terms: Mapping[str, Any] = field(default_factory=lambda: {"si_fg": 1.0, "si_bg": 1.0, "si_sm": 1.0})
    prompt: str = "{token} {object}"  # §3.2: the prompt "* CLASS" (the token, then the class word)
    class_prompt: str = "{object}"  # train.py L1001: class_prompt = args.class_name
    optimizer: str = "adam"  # "adam" | "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # >0: clip the trained parameters' gradient norm
    steps: int | None = None  # a total budget (`clic learn --steps`): split over the stages in the paper's 50:100
    resolution: int | None = None  # the source's side (recorded; the source arrives at this size)
    placeholder: str = "<v*>"
    encoder_model: str = "auto"  # "auto": the tiny ViT on tiny components; else an open_clip architecture
    encoder_pretrained: str | None = None  # local open_clip checkpoint file (required for a real encoder)
    unet_lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")

    WHAT: ClassVar[str] = "SingleInsert option(s)"

    @classmethod
    def coerce(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("steps") is not None:  # a budget replaces both stage lengths, in the paper's proportions
            total = int(data["steps"])
            one = data.get("stage_one_steps", cls.stage_one_steps)
            two = data.get("stage_two_steps", cls.stage_two_steps)
            data["stage_one_steps"] = min(total, max(1 if total > 1 else 0, round(total * one / max(one + two, 1))))
            data["stage_two_steps"] = total - data["stage_one_steps"]
            data["steps"] = None
        for key in ("unet_lora_targets", "text_lora_targets"):
            if key in data:
                data[key] = tuple(data[key])
        return data

    def validate(self) -> None:
        if self.stage_one_steps < 0 or self.stage_two_steps < 0 or self.stage_one_steps + self.stage_two_steps == 0:
            raise ValueError(
                f"stage steps must be >= 0 with a positive total, got {self.stage_one_steps} + {self.stage_two_steps}"
            )
        if min(self.stage_one_batch_size, self.stage_two_batch_size, self.lora_rank) <= 0:
            raise ValueError(
                f"batch sizes and lora_rank must be positive, got {self.stage_one_batch_size}, "
                f"{self.stage_two_batch_size}, {self.lora_rank}"
            )
        if self.stage_one_lr <= 0 or self.stage_two_lr <= 0:
            raise ValueError("stage learning rates must be positive")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        Objective(self.terms)  # unknown terms or all-zero weights fail here, not mid-run


# ---------------------------------------------------------------------------------- the encoder
class ConceptImageEncoder(nn.Module):
    """CLIP visual tower + linear projection: the source's foreground -> one token embedding."""

    def __init__(self, visual: nn.Module, token_dim: int, init_vector: torch.Tensor) -> None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        super().__init__()
        self.visual = visual
        preprocess = getattr(visual, "preprocess_cfg", {}) or {}
        size = visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        self.register_buffer(
            "mean", torch.tensor(preprocess.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(preprocess.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1), persistent=False
        )
        self.projection = nn.Linear(visual.output_dim, token_dim)
        with torch.no_grad():
            # Start at the object word (Textual Inversion's initialisation) plus a small image-dependent part.
            self.projection.weight.normal_(std=1e-2)
            self.projection.bias.copy_(init_vector)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, R, R) in [-1, 1] -> (B, token_dim). The encoder sees the whole input image (SingleInsert
        §3.2: the image, not a masked foreground, is encoded; the mask enters only through L_fg / L_bg)."""
        pixels = F.interpolate((image + 1) / 2, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
        return self.projection(self.visual((pixels - self.mean) / self.std))


def build_visual_tower(config: SingleInsertConfig, components: SDComponents) -> nn.Module:
    """The configured CLIP visual tower (tiny seeded ViT, or an open_clip model from a local checkpoint)."""
    import open_clip
    from open_clip.transformer import VisionTransformer

    if config.encoder_model == "auto" and components.is_tiny:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_ENCODER_SEED)
            return VisionTransformer(**TINY_ENCODER)
    model_name = "ViT-B-32" if config.encoder_model == "auto" else config.encoder_model  # §4.1: CLIP ViT-B/32
    if not config.encoder_pretrained or not Path(config.encoder_pretrained).is_file():
        raise FileNotFoundError(
            f"SingleInsert's image encoder {model_name} needs a local open_clip checkpoint: set learn.encoder_pretrained "
            f"to a .bin/.pt/.safetensors file (got {config.encoder_pretrained!r}; nothing is downloaded)"
        )
    return open_clip.create_model(model_name, pretrained=config.encoder_pretrained).visual


# ------------------------------------------------------------------------------------ LoRA
def add_lora(components: SDComponents, rank: int, unet_targets: Sequence[str], text_targets: Sequence[str]) -> None:
    """Rank-``rank`` LoRA adapters (α = rank: scale 1) as diffusers' LoRA training examples add them."""
    from peft import LoraConfig

    for module, targets in ((components.unet, unet_targets), (components.text_encoder, text_targets)):
        module.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets)),
            adapter_name=ADAPTER,
        )


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in module.named_parameters() if "lora_" in name]


def lora_state_dict(components: SDComponents) -> dict[str, torch.Tensor]:
    """The adapters in diffusers' LoRA format (``unet.…`` / ``text_encoder.…`` keys)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = {}
    for prefix, module in (("unet", components.unet), ("text_encoder", components.text_encoder)):
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(module, adapter_name=ADAPTER))
        state.update({f"{prefix}.{key}": value.detach().clone() for key, value in layers.items()})
    return state


def save_lora(state: Mapping[str, torch.Tensor], directory: str | Path) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with diffusers' own writer (``pipe.load_lora_weights`` reads it)."""
    from diffusers import StableDiffusionPipeline

    split = {
        prefix: {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        for prefix in ("unet", "text_encoder")
    }
    StableDiffusionPipeline.save_lora_weights(
        str(directory),
        unet_lora_layers=split["unet"],
        text_encoder_lora_layers=split["text_encoder"],
        weight_name=LORA_FILE,
    )
    return Path(directory) / LORA_FILE


def install_lora(components: SDComponents, concept: LearnedConcept) -> None:
    """Load the concept's LoRA weights into the components with diffusers' loaders (once per components)."""
    from diffusers import StableDiffusionPipeline

    state = {k[len(LORA_PREFIX) :]: v for k, v in concept.arrays.items() if k.startswith(LORA_PREFIX)}
    if not state or ADAPTER in (getattr(components.unet, "peft_config", None) or {}):
        return
    from transformers.utils import logging as transformers_logging

    StableDiffusionPipeline.load_lora_into_unet(state, None, components.unet, adapter_name=ADAPTER)
    # transformers draws a "Loading weights" bar for these few tensors: one per transfer/generation job is noise
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        StableDiffusionPipeline.load_lora_into_text_encoder(
            state, None, components.text_encoder, prefix="text_encoder", adapter_name=ADAPTER
        )
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
