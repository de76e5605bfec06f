"""SingleInsert (Wu et al., arXiv 2310.08094): an image encoder maps the source's foreground to the token.

Stage I trains an image encoder — a CLIP visual tower plus a linear projection to the text encoder's
embedding width — whose output *is* the placeholder token's embedding, with

    x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, or √ᾱ_t x_t − √(1−ᾱ_t) v̂ on a v-prediction model (clic.prediction)
    L_fg = mean(m_f ⊙ (x̂₀ − x₀)²)                                      (prompt with the token)
    L_bg = mean((1 − m_f) ⊙ (x̂₀ − x̄₀)²)   x̄₀: frozen model, class prompt, no gradient
    L_I  = L_fg + γ L_bg,  γ = 1

Stage II adds rank-4 LoRA adapters (peft, as diffusers' LoRA training scripts install them) to the UNet
and the text encoder and keeps training the encoder with

    L_sm = mean((x̂₀(adapted, class prompt) − x̂₀(frozen, class prompt))²)
    L_II = L_fg + γ L_bg + η L_sm,  γ = η = 1

(x̄₀ of L_bg and the frozen x̂₀ of L_sm are the same prediction: the adapters disabled, class prompt).
Every loss is a mean over latent elements, as :mod:`clic.losses`; m_f is the source mask area-resized to
the latents. The terms are registered (``si_fg``, ``si_bg``, ``si_sm``) so a suite's ``loss_weights``
ablates them like any other term.

The concept is a :class:`~clic.concept.LearnedConcept`: the encoder's output for the source is the token
vector (``learned_embeds-*.safetensors``, loadable by ``load_textual_inversion``); the LoRA weights are
written as ``pytorch_lora_weights.safetensors`` (``pipeline.load_lora_weights(folder)``) and kept, under
the same keys prefixed ``lora/``, in the concept's ``arrays`` so :meth:`SingleInsert.transfer` and
:meth:`SingleInsert.generate` install them on fresh components before the shared loops run. The encoder
itself is not saved: once the token is computed, inference does not need it.

The encoder: ``encoder_model = "auto"`` builds a tiny seeded ViT for the ``tiny`` preset; a real model
needs an open_clip architecture (``encoder_model``) and a local checkpoint (``encoder_pretrained``) —
nothing is downloaded.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..concept import LearnedConcept
from ..learn import ConceptSource, encode_text, format_prompt, sample_latents, seed_everything, tokenize, vae_moments
from ..losses import Objective, StepTensors, register_branch, register_term, resize_mask
from ..models import SDComponents
from ..prediction import predicted_x0
from ..presets import Setting, preset_overrides, replaced
from ..settings import MethodConfig
from ..tokens import ConceptTokens, merge_concept_embeddings
from .base import Method

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save/load_lora_weights use
LORA_PREFIX = "lora/"  # LoRA tensors inside LearnedConcept.arrays
ADAPTER = "single_insert"
TINY_ENCODER = {"image_size": 64, "patch_size": 8, "width": 64, "layers": 2, "heads": 2, "mlp_ratio": 4.0, "output_dim": 32}
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
            raise ValueError(f"stage steps must be >= 0 with a positive total, got {self.stage_one_steps} + {self.stage_two_steps}")
        if min(self.stage_one_batch_size, self.stage_two_batch_size, self.lora_rank) <= 0:
            raise ValueError(f"batch sizes and lora_rank must be positive, got {self.stage_one_batch_size}, "
                             f"{self.stage_two_batch_size}, {self.lora_rank}")
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
        self.register_buffer("mean", torch.tensor(preprocess.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1), persistent=False)
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
        module.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                      target_modules=list(targets)), adapter_name=ADAPTER)


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

    split = {prefix: {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
             for prefix in ("unet", "text_encoder")}
    StableDiffusionPipeline.save_lora_weights(str(directory), unet_lora_layers=split["unet"],
                                              text_encoder_lora_layers=split["text_encoder"], weight_name=LORA_FILE)
    return Path(directory) / LORA_FILE


def install_lora(components: SDComponents, concept: LearnedConcept) -> None:
    """Load the concept's LoRA weights into the components with diffusers' loaders (once per components)."""
    from diffusers import StableDiffusionPipeline

    state = {k[len(LORA_PREFIX):]: v for k, v in concept.arrays.items() if k.startswith(LORA_PREFIX)}
    if not state or ADAPTER in (getattr(components.unet, "peft_config", None) or {}):
        return
    from transformers.utils import logging as transformers_logging

    StableDiffusionPipeline.load_lora_into_unet(state, None, components.unet, adapter_name=ADAPTER)
    # transformers draws a "Loading weights" bar for these few tensors: one per transfer/generation job is noise
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        StableDiffusionPipeline.load_lora_into_text_encoder(state, None, components.text_encoder,
                                                            prefix="text_encoder", adapter_name=ADAPTER)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------- learning
@dataclass
class StageInfo:
    """What one stage trains: handed to ``on_stage`` (tests and logs inspect it)."""

    name: str
    parameters: list[nn.Parameter]
    encoder: ConceptImageEncoder
    lr: float = 0.0
    batch_size: int = 0
    prompt: str = ""


class _TokenText:
    """Encodes prompts with the token's embedding taken from the encoder output (differentiably)."""

    def __init__(self, components: SDComponents, tokens: ConceptTokens) -> None:
        self.components = components
        self.tokens = tokens
        self.parameter_name = next(n for n, p in components.text_encoder.named_parameters() if p is tokens.parameter)
        tokens.parameter.requires_grad_(False)  # the encoder, not this row, is what trains

    def __call__(self, prompts: Sequence[str], vector: torch.Tensor) -> torch.Tensor:
        ids = tokenize(self.components.tokenizer, prompts).to(self.components.text_encoder.device)
        return torch.func.functional_call(self.components.text_encoder, {self.parameter_name: vector}, (ids,))[0]


def learn_single_insert(
    components: SDComponents,
    source: ConceptSource,
    config: SingleInsertConfig,
    *,
    preset: str = "paper",
    seed: int = 0,
    progress_every: int = 0,
    on_stage: Callable[[StageInfo], None] | None = None,
) -> LearnedConcept:
    """Both stages on one source image and one mask; returns the concept (token vector + LoRA weights)."""
    config.validate()
    if source.images.shape[0] != 1 or source.n_tokens != 1:
        raise ValueError(f"SingleInsert learns one concept from one image; got {source.images.shape[0]} image(s) "
                         f"and {source.n_tokens} mask(s)")
    generator = seed_everything(seed)
    device = components.unet.device
    components.freeze()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, [config.placeholder], [source.object_word])
    token_text = _TokenText(components, tokens)
    encoder = ConceptImageEncoder(build_visual_tower(config, components), tokens.parameter.shape[-1],
                                  tokens.parameter[0].detach()).to(device)

    image = source.images.to(device)  # (1, 3, R, R)
    pixel_mask = source.image_masks.to(device, image.dtype)  # (1, 1, R, R)
    moments = vae_moments(components, image)  # the source's posterior, encoded once
    latent_mask = resize_mask(pixel_mask, moments.shape[-2:])
    scheduler = components.scheduler  # x̂₀ follows its prediction type (the released train.py reads every output as ε)
    prompt = format_prompt(config.prompt, source.object_word, tokens.tokens)
    with torch.no_grad():
        class_text_one = encode_text(components, [format_prompt(config.class_prompt, source.object_word, tokens.tokens)])[0]

    loss_log: list[dict[str, float]] = []
    started = time.perf_counter()
    stages = (("stage_1", config.stage_one_steps, config.stage_one_lr, config.stage_one_batch_size),
              ("stage_2", config.stage_two_steps, config.stage_two_lr, config.stage_two_batch_size))
    for stage, steps, lr, batch in stages:
        if steps == 0:
            continue
        prompts = [prompt] * batch
        class_text = class_text_one.expand(batch, -1, -1)
        adapted = stage == "stage_2"
        terms = dict(config.terms) if adapted else {k: v for k, v in config.terms.items() if k != "si_sm"}
        objective = Objective(terms)
        if adapted:
            add_lora(components, config.lora_rank, config.unet_lora_targets, config.text_lora_targets)
        parameters = list(encoder.parameters()) + (lora_parameters(components.unet) + lora_parameters(components.text_encoder)
                                                   if adapted else [])
        if on_stage is not None:
            on_stage(StageInfo(stage, parameters, encoder, lr, batch, prompt))
        optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_cls(parameters, lr=lr, weight_decay=config.weight_decay)
        for _ in range(steps):
            x0 = sample_latents(components, moments.expand(batch, -1, -1, -1), generator)
            timesteps = torch.randint(0, components.scheduler.config.num_train_timesteps, (batch,), generator=generator).to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            x_t = components.scheduler.add_noise(x0, noise, timesteps)
            with torch.no_grad(), _adapters_disabled(components, adapted):
                eps_class = components.unet(x_t, timesteps, encoder_hidden_states=class_text).sample
            vector = encoder(image)
            text = token_text(prompts, vector)
            if "semantic" in objective.needs:  # one pass: token prompt rows, then adapted class-prompt rows
                adapted_class_text = encode_text(components, [format_prompt(config.class_prompt, source.object_word,
                                                                            tokens.tokens)])[0].expand(batch, -1, -1)
                eps = components.unet(torch.cat([x_t, x_t]), timesteps.repeat(2),
                                      encoder_hidden_states=torch.cat([text, adapted_class_text])).sample
                eps, eps_adapted_class = eps.chunk(2)
            else:
                eps, eps_adapted_class = components.unet(x_t, timesteps, encoder_hidden_states=text).sample, None
            extras = {
                "x0": x0,
                "x0_pred": predicted_x0(scheduler, x_t, eps, timesteps),
                "x0_class": predicted_x0(scheduler, x_t, eps_class, timesteps),
            }
            if eps_adapted_class is not None:
                extras["x0_adapted_class"] = predicted_x0(scheduler, x_t, eps_adapted_class, timesteps)
            loss, values = objective(StepTensors(noise=noise, mask=latent_mask, extras=extras))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss)} at {stage} step {len(loss_log)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            values.update(step=len(loss_log), stage=1.0 if stage == "stage_1" else 2.0)
            loss_log.append(values)
            if progress_every and len(loss_log) % progress_every == 0:
                print(f"single_insert {stage} step {len(loss_log)}: {values['total']:.4f}")

    with torch.no_grad():
        vector = encoder(image)[0].detach().cpu()
    lora = lora_state_dict(components) if config.stage_two_steps else {}
    _remove_adapters(components)
    merge_concept_embeddings(components.text_encoder)
    return LearnedConcept(
        method="single_insert",
        preset=preset,
        tokens=list(tokens.tokens),
        object_word=source.object_word,
        vectors={config.placeholder: vector},
        model_id=components.model_id,
        weights_hash=components.weights_hash,
        config={**config.to_dict(), "seed": seed},
        loss_log=loss_log,
        arrays={**{LORA_PREFIX + k: v.cpu() for k, v in lora.items()},
                "source_image": source.image.detach().cpu(), "source_masks": source.masks.detach().cpu()},
        extras={"seconds": round(time.perf_counter() - started, 3), "lora_file": LORA_FILE if lora else None},
    )


class _adapters_disabled:
    """The frozen model: LoRA adapters off in UNet and text encoder for the block (no-op in stage I)."""

    def __init__(self, components: SDComponents, active: bool) -> None:
        self.modules = (components.unet, components.text_encoder) if active else ()

    def __enter__(self) -> None:
        for module in self.modules:
            module.disable_adapters()

    def __exit__(self, *exc: object) -> None:
        for module in self.modules:
            module.enable_adapters()


def _remove_adapters(components: SDComponents) -> None:
    """Leave the components as they were loaded (the adapters live on in the concept): the adapter layers are
    taken out of the module tree, not only deleted (``delete_adapters`` leaves the peft wrappers, and with them
    renamed parameters that make a lent model reload)."""
    from ..lora import remove_lora

    remove_lora(components.unet)
    remove_lora(components.text_encoder)


# ------------------------------------------------------------------------------------ the method
PAPER = "SingleInsert (Wu et al., arXiv 2310.08094)"
CODE = "JarrentWu1031/SingleInsert train.py"
PAPER_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.stage_one_steps", 50, f"{PAPER} §4.1: stage I 50 iterations"),
    Setting("learn.stage_one_lr", 1e-4, f"{PAPER} §4.1: stage I lr 1e-4"),
    Setting("learn.stage_one_batch_size", 16, f"{PAPER} §4.1: stage I batch 16"),
    Setting("learn.stage_two_steps", 100, f"{PAPER} §4.1: stage II 100 iterations"),
    Setting("learn.stage_two_lr", 5e-5, f"{PAPER} §4.1: stage II lr 5e-5"),
    Setting("learn.stage_two_batch_size", 4, f"{PAPER} §4.1: stage II batch 4"),
    Setting("learn.lora_rank", 4, f"{PAPER} §3.3 (rank-4 LoRA); {CODE} --rank 4"),
    Setting("learn.terms", {"si_fg": 1.0, "si_bg": 1.0, "si_sm": 1.0},
            f"{PAPER} §3.2-3.3: L_fg + γ L_bg (+ η L_sm in stage II), γ = η = 1 ({CODE} --bg_weight 1 --sm_weight 1)"),
    Setting("learn.prompt", "{token} {object}", f"{PAPER} §3.2: '* CLASS' ({CODE}: ' '.join([placeholder, class_name]))"),
    Setting("learn.class_prompt", "{object}", f"{PAPER} §3.2 (x̄₀ from the class name); {CODE} L1001: "
                                              "class_prompt = args.class_name"),
    Setting("learn.encoder_model", "auto", f"{PAPER} §4.1: CLIP ViT-B/32 image encoder ({CODE}: VisionTransformer "
                                           "patch 32, width 768, 12 layers); 'auto' = ViT-B-32 on a real model, a tiny "
                                           "seeded ViT on the tiny one"),
    Setting("learn.optimizer", "adam", "our choice: the paper names no optimizer"),
    Setting("generate.stage_one_steps", 5, "CLiC paper §4.1 (two-stage generation): the first 5 steps on the base model (adapters off)"),
)
ONE_STAGE_SETTINGS: tuple[Setting, ...] = replaced(
    PAPER_SETTINGS,
    Setting("generate.stage_one_steps", 0, f"{PAPER} §4.1: generation with the adapted model at every step"),
    Setting("generate.prompt", "a photo of {token} on an {object}", f"{PAPER} §4.1: the token in the generation "
                                                                         "prompt; the wording our choice"),
)
OFFICIAL_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.stage_one_steps", 50, f"{CODE} L237: --s1_train_steps 50"),
    Setting("learn.stage_one_lr", 1e-4, f"{CODE} L286-290: --s1_learning_rate 1e-4"),
    Setting("learn.stage_one_batch_size", 4, f"{CODE} L231: --s1_train_batch_size 4"),
    Setting("learn.stage_two_steps", 50, f"{CODE} L240: --s2_train_steps 50 (README: 50 for both stages)"),
    Setting("learn.stage_two_lr", 5e-5, f"{CODE} L292-296: --s2_learning_rate 5e-5"),
    Setting("learn.stage_two_batch_size", 4, f"{CODE} L234: --s2_train_batch_size 4"),
    Setting("learn.lora_rank", 4, f"{CODE} L407-410: --rank 4"),
    Setting("learn.prompt", "{token} {object}", f"{CODE} L477: ' '.join([placeholder_token, class_name])"),
    Setting("learn.class_prompt", "{object}", f"{CODE} L1001: class_prompt = args.class_name"),
    Setting("learn.optimizer", "adamw", f"{CODE} L853: torch.optim.AdamW"),
    Setting("learn.weight_decay", 1e-2, f"{CODE} L335: --adam_weight_decay 1e-2"),
    Setting("learn.max_grad_norm", 1.0, f"{CODE} L337: --max_grad_norm 1.0"),
    Setting("generate.stage_one_steps", 5, "CLiC paper §4.1 (two-stage generation): the first 5 steps on the base model (adapters off)"),
)


class SingleInsert(Method):
    name = "single_insert"
    description = "Image encoder -> token (foreground/background x̂₀ losses), then + LoRA with a semantic loss"
    trains = "stage I: CLIP image encoder + projection; stage II: + rank-4 LoRA on UNet and text encoder"
    tasks = frozenset({"learn", "transfer", "generate"})
    base_config = SingleInsertConfig()
    declared_settings = {"paper": PAPER_SETTINGS, "one-stage": ONE_STAGE_SETTINGS, "official-code": OFFICIAL_SETTINGS}
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "paper"
    sources = {setting.key: setting.source for setting in PAPER_SETTINGS}

    def learn_config(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> SingleInsertConfig:
        return self.base_config.merged(self.preset(preset).get("learn")).merged(overrides)

    def learn(self, components: SDComponents, source: ConceptSource, *, preset: str | None = None,
              overrides: Mapping[str, Any] | None = None, seed: int = 0, out_dir: str | Path | None = None,
              progress: bool = True) -> LearnedConcept:
        self.require("learn")
        config = self.resolve("learn", preset, overrides)
        concept = learn_single_insert(components, source, config, preset=preset or self.default_preset, seed=seed,
                                      progress_every=10 if progress else 0)
        if out_dir is not None:
            concept.save(out_dir)
            lora = {k[len(LORA_PREFIX):]: v for k, v in concept.arrays.items() if k.startswith(LORA_PREFIX)}
            if lora:
                save_lora(lora, out_dir)
        return concept

    def transfer(self, components: SDComponents, concept: LearnedConcept, target_image: torch.Tensor,
                 target_mask: torch.Tensor, object_word: str, **kwargs: Any):
        install_lora(components, concept)
        return super().transfer(components, concept, target_image, target_mask, object_word, **kwargs)

    def generate(self, components: SDComponents, concept: LearnedConcept, object_word: str, **kwargs: Any):
        install_lora(components, concept)
        return super().generate(components, concept, object_word, **kwargs)
