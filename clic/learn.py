"""The concept-learning loop shared by every method.

One training step (CLiC, paper §3.1, the total loss of Eq. (5)): draw an augmented source (latents cached per geometric variant),
t ~ U{0, …, T−1}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, then ONE batched UNet pass over

    row 0:    x_t          with c  = "A OBJECT with <v*> style[, zoomed-in|out]"   → l_con, l_att
    rows 1..: M_k ⊙ x_t    with c* = "A photo of <v*_k>"                          → l_RoI

sharing t and ε, with the v* cross-attention of row 0 recorded on the up blocks. Branches no active loss
term needs are not run. Methods change the step through their :class:`LearnConfig` (which parameters
train, prompts, terms, phases) or by overriding :meth:`clic.methods.base.Method.training_step`.
"""
from __future__ import annotations

import random
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from .attention import AttentionCapture
from .augment import AugmentConfig, LatentBank, image_region
from .concept import LearnedConcept
from .device import autocast_dtype
from .losses import Objective, StepTensors, resize_mask
from .models import SDComponents, components_architecture
from .prediction import training_target
from .reuse import keep_originals
from .settings import MethodConfig
from .tokens import ConceptTokens, merge_concept_embeddings


@dataclass(frozen=True)
class Phase:
    """A span of steps with its own trainable set and learning rates (Break-A-Scene has two)."""

    steps: int
    token_lr: float
    attention_lr: float = 0.0  # 0: attention weights frozen in this phase
    unet_lr: float = 0.0  # >0: the whole UNet trains (Break-A-Scene's original recipe)
    text_encoder_lr: float = 0.0


@dataclass(frozen=True)
class LearnConfig(MethodConfig):
    """Everything that determines a learning run (hashable into a job id via :meth:`to_dict`)."""

    steps: int = 500
    lr: float = 1e-5  # token and attention weights, paper §4 preamble ("Adam, learning rate 1e-5")
    token_lr: float | None = None  # None: same as lr
    optimizer: str = "adam"  # "adam" | "adamw"
    weight_decay: float = 0.0  # attention (and fine-tuned model) weights
    token_weight_decay: float = 0.0  # the token vectors only (Textual Inversion's AdamW uses 1e-2)
    max_grad_norm: float = 0.0  # >0: clip the gradient norm of the trained weights (diffusers' --max_grad_norm)
    clip_token_grad: bool = True  # the token rows count in the clipped norm (as every reference script here does)
    gradient_accumulation: int = 1  # micro-steps per optimizer step; ``steps`` counts optimizer steps
    scale_lr: bool = False  # lr × gradient_accumulation (× batch 1 × 1 process), diffusers' --scale_lr
    # Prior preservation (DreamBooth; Break-A-Scene's train.py): {"weight", "prompt", "images", "steps"}; {} = off.
    prior: Mapping[str, Any] = field(default_factory=dict)
    # LoRA adapters (peft) instead of whole networks: {"rank", "alpha", "dropout", "unet_targets", "text_targets"};
    # a phase's unet_lr / text_encoder_lr then train the adapters only (RealFill's train_realfill.py). {} = off.
    lora: Mapping[str, Any] = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()  # non-empty: overrides steps/lr (multi-phase methods)
    train_kv: bool = True
    train_q_out: bool = False
    train_layers: str = "all"  # cross-attention layers that get trainable copies
    capture_layers: str = "up"  # where l_att reads attention (paper: up-block cross-attention)
    attention_resolution: int | str | None = None  # None: the coarsest captured layer's side; "latent": the latent grid
    normalize_attention: bool = False  # divide each token map by its max (Break-A-Scene)
    attention_norm: str = "raw"  # "raw" probabilities | "minmax": (A − min)/(max − min) per token map
    same_resolution_maps: bool = False  # average only layers native to attention_resolution (Break-A-Scene: 16×16)
    terms: Mapping[str, Any] = field(
        default_factory=lambda: {"con": {"weight": 1.0, "alpha": 0.5}, "att": 0.5, "roi": 0.5}
    )
    context_prompt: str = "A {object} with {tokens} style"
    roi_prompts: tuple[str, ...] = ("A photo of {token}",)  # several: one drawn at random per step
    roi_mask_space: str = "latent"  # "latent": M ⊙ x_t (paper); "pixel": mask the image before encoding
    placeholder: str = "<v*>"
    init_word: str | None = None  # None: the object word
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    resolution: int | None = None  # None: the model's native resolution
    checkpoint_every: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16": autocast; trained weights stay fp32
    gradient_checkpointing: bool = False
    compile_unet: bool = False  # torch.compile the UNet (opt-in; on CPU it compiles for minutes and runs slower)

    MERGED: ClassVar[tuple[str, ...]] = ("terms", "augment", "prior", "lora")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["prior"] = dict(self.prior)
        data["lora"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(self.lora).items()}
        return data

    def merged(self, overrides: Mapping[str, Any] | None) -> LearnConfig:
        if isinstance(overrides, LearnConfig):  # already resolved: it replaces this config whole
            return overrides
        if overrides and "steps" in overrides and "phases" not in overrides and self.phases:
            # A step budget for a phased method (e.g. `clic learn --steps 3`): the phases keep their proportions.
            overrides = {**overrides, "phases": [asdict(p) for p in split_phases(self.phases, int(overrides["steps"]))]}
        return super().merged(overrides)

    @classmethod
    def coerce(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "augment" in data and isinstance(data["augment"], Mapping):
            augment = dict(data["augment"])
            if "jitter_kinds" in augment:
                augment["jitter_kinds"] = tuple(augment["jitter_kinds"])
            data["augment"] = AugmentConfig(**augment)
        if "phases" in data:
            data["phases"] = tuple(p if isinstance(p, Phase) else Phase(**p) for p in data["phases"])
        if "roi_prompts" in data and isinstance(data["roi_prompts"], str):
            data["roi_prompts"] = (data["roi_prompts"],)
        if "roi_prompts" in data:
            data["roi_prompts"] = tuple(data["roi_prompts"])
        return data

    def validate(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"steps must be positive, got {self.total_steps}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.roi_mask_space not in ("latent", "pixel"):
            raise ValueError(f"roi_mask_space must be 'latent' or 'pixel', got {self.roi_mask_space!r}")
        if self.attention_norm not in ("raw", "minmax"):
            raise ValueError(f"attention_norm must be 'raw' or 'minmax', got {self.attention_norm!r}")
        if isinstance(self.attention_resolution, str) and self.attention_resolution != "latent":
            raise ValueError(f"attention_resolution must be a side in cells or 'latent', got {self.attention_resolution!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.lora and (int(self.lora.get("rank", 0)) <= 0 or not self.lora.get("unet_targets")
                          or not self.lora.get("text_targets")):
            raise ValueError(f"lora needs a positive rank and unet_targets / text_targets, got {dict(self.lora)}")
        if isinstance(self.resolution, int) and self.resolution > 0:
            from .limits import image_memory_problem  # the bound `clic learn` and the suite reader apply first

            problem = image_memory_problem(self.resolution)
            if problem is not None:
                raise ValueError(f"resolution {self.resolution} is too large: {problem}")
        if self.gradient_accumulation < 1 or self.max_grad_norm < 0:
            raise ValueError(f"gradient_accumulation must be >= 1 and max_grad_norm >= 0, got "
                             f"{self.gradient_accumulation}, {self.max_grad_norm}")

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases) if self.phases else self.steps

    def schedule(self) -> tuple[Phase, ...]:
        """The phases with their effective learning rates (``scale_lr``: × gradient_accumulation, as diffusers'
        scripts scale by accumulation × batch size (1) × processes (1))."""
        if self.phases:
            phases = self.phases
        else:
            phases = (Phase(self.steps, self.token_lr if self.token_lr is not None else self.lr,
                            self.lr if (self.train_kv or self.train_q_out) else 0.0),)
        if not self.scale_lr or self.gradient_accumulation == 1:
            return phases
        k = self.gradient_accumulation
        return tuple(replace(p, token_lr=p.token_lr * k, attention_lr=p.attention_lr * k, unet_lr=p.unet_lr * k,
                             text_encoder_lr=p.text_encoder_lr * k) for p in phases)


def split_phases(phases: Sequence[Phase], total: int) -> tuple[Phase, ...]:
    """``phases`` with their step counts rescaled to sum to ``total`` (each keeps ≥ 1 step while total allows)."""
    weights = [p.steps for p in phases]
    counts = [max(1, round(total * w / sum(weights))) if total >= len(phases) else 0 for w in weights]
    if total < len(phases):
        counts = [1 if i < total else 0 for i in range(len(phases))]
    counts[-1] += total - sum(counts)
    while counts[-1] < 0:  # rounding overshot: take the excess from the longest phase
        longest = max(range(len(counts) - 1), key=lambda i: counts[i])
        counts[longest] -= 1
        counts[-1] += 1
    return tuple(replace(p, steps=n) for p, n in zip(phases, counts) if n > 0)


@dataclass
class ConceptSource:
    """Source image(s) and one mask per concept token, as model-ready tensors.

    One image: ``image`` (3, R, R), ``masks`` (n_tokens, R, R) (a single (R, R) mask is one token).
    Several images sharing one concept (the automatic source mask, paper §3.3): ``image`` (K, 3, R, R),
    ``masks`` (K, n_tokens, R, R); each learning step draws one of them.
    """

    image: torch.Tensor  # (3, R, R) or (K, 3, R, R) in [-1, 1]
    masks: torch.Tensor  # (n_tokens, R, R) or (K, n_tokens, R, R) in {0, 1}
    object_word: str

    def __post_init__(self) -> None:
        if self.masks.dim() == 2:
            self.masks = self.masks[None]
        expected_dims = 4 if self.image.dim() == 4 else 3
        if self.masks.dim() != expected_dims or self.masks.shape[-2:] != self.image.shape[-2:] or (
            expected_dims == 4 and self.masks.shape[0] != self.image.shape[0]
        ):
            raise ValueError(f"masks {tuple(self.masks.shape)} do not match image {tuple(self.image.shape)}")
        if (self.masks.flatten(-2).sum(-1) == 0).any():
            raise ValueError("a concept mask is empty")

    @property
    def images(self) -> torch.Tensor:
        """(K, 3, R, R): the single-image case as K = 1."""
        return self.image if self.image.dim() == 4 else self.image[None]

    @property
    def image_masks(self) -> torch.Tensor:
        """(K, n_tokens, R, R)."""
        return self.masks if self.masks.dim() == 4 else self.masks[None]

    @property
    def n_tokens(self) -> int:
        return self.masks.shape[-3]


# ------------------------------------------------------------------------------ text helpers


_TOKEN_IDS: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[str, ...]], torch.Tensor]] = weakref.WeakKeyDictionary()
_TOKEN_IDS_PER_TOKENIZER = 512  # a learning loop sees a handful of prompts; a worker many concepts' prompts


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Padded token ids of ``prompts``. A learning loop asks for the same few prompts every step, and the
    tokenizer costs about as much as a small text encoder's pass: ids are remembered per tokenizer and its
    vocabulary size (adding a concept token changes how a prompt tokenizes, and the size with it)."""
    key = (len(tokenizer), tuple(prompts))
    cache = _TOKEN_IDS.setdefault(tokenizer, {})
    if key not in cache:
        if len(cache) >= _TOKEN_IDS_PER_TOKENIZER:
            cache.clear()
        cache[key] = tokenizer(
            list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
    return cache[key].clone()


def encode_text(components: SDComponents, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings on the model's device, token ids on the CPU): positions are looked up in the ids on the
    CPU, without a device round trip."""
    ids = tokenize(components.tokenizer, prompts)
    return components.text_encoder(ids.to(components.text_encoder.device))[0], ids


# "a"/"an" written before {object} in a template follows the word: "a chair", "an apple", "an hour", "a unicorn".
_ARTICLE_BEFORE_OBJECT = re.compile(r"\b([Aa])n? (\{object\})")
_AN_EXCEPTIONS = ("hour", "honest", "honor", "honour", "heir")  # silent h: "an"
_A_EXCEPTIONS = ("uni", "use", "usu", "uten", "eu", "one", "once", "ewe", "uk", "ur")  # "you"/"w" sounds: "a"


def indefinite_article(word: str) -> str:
    """"an" before a vowel sound, else "a" (spelling rules with the common exceptions)."""
    lower = word.strip().lower()
    if lower.startswith(_AN_EXCEPTIONS):
        return "an"
    if lower.startswith(_A_EXCEPTIONS):
        return "a"
    return "an" if lower[:1] in tuple("aeiou") else "a"


def format_prompt(template: str, object_word: str, tokens: Sequence[str]) -> str:
    article = indefinite_article(object_word)
    template = _ARTICLE_BEFORE_OBJECT.sub(lambda m: (article.capitalize() if m.group(1) == "A" else article) + " {object}",
                                          template)
    return template.format(object=object_word, tokens=" and ".join(tokens), token=tokens[0])


def vae_moments(components: SDComponents, images: torch.Tensor, *, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Posterior mean and log-variance (2·C channels) of images in [-1, 1].

    ``device``/``dtype``: the VAE's, when the caller already knows them (a diffusers model looks both up by
    walking its modules, ≈ 0.3 ms each on the tiny model: a loop that encodes every few steps resolves them once).
    """
    vae = components.vae
    with torch.no_grad():
        return vae.encode(images.to(device or vae.device, dtype or vae.dtype)).latent_dist.parameters


def sample_latents(components: SDComponents, moments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Latents in fp32 on the model's device (drawn on the CPU generator: the same on every device)."""
    mean, logvar = moments.float().chunk(2, dim=-3)
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    return (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise) * components.vae.config.scaling_factor


# ------------------------------------------------------------------------------------ the loop


@dataclass
class TrainState:
    """What a training step needs besides the batch: the learnable parts and the objective."""

    components: SDComponents
    tokens: ConceptTokens
    capture: AttentionCapture
    objective: Objective
    config: LearnConfig
    attention_resolution: int
    # The UNet's dtype, looked up once per run (diffusers walks every module to find it: ≈ 0.5 ms per step).
    model_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.model_dtype is None:
            self.model_dtype = self.components.dtype


@dataclass
class StepBatch:
    latents: torch.Tensor  # (1, 4, h, w)
    masks: torch.Tensor  # (n, H, W) pixel masks of this augmentation
    image: torch.Tensor  # (3, H, W) augmented image
    suffix: str
    timestep: torch.Tensor  # (1,)
    noise: torch.Tensor  # (1, 4, h, w)
    roi_latents: torch.Tensor | None = None  # (n, 4, h, w) pixel-space masked variants, if configured
    roi_prompt_indices: tuple[int, ...] | None = None  # the RoI template drawn for each token (several templates)
    valid: torch.Tensor | None = None  # (1, 1, h, w) latent pixels showing the image (not a zoom-out's padding)


def fused_step(state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
    """The CLiC step: context and RoI branches in one UNet pass sharing t and ε."""
    components, config, tokens = state.components, state.config, state.tokens
    needs = state.objective.needs
    n = len(tokens.tokens)
    latent_size = batch.latents.shape[-2:]
    latent_masks = resize_mask(batch.masks[None], latent_size)[0]  # (n, h, w), area-averaged
    union = latent_masks.amax(dim=0, keepdim=True)[None]  # (1, 1, h, w)
    scheduler = components.scheduler

    x_t = scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    rows, prompts, roi_x0 = [], [], None
    if "context" in needs:
        rows.append(x_t)
        prompts.append(format_prompt(config.context_prompt, object_word, tokens.tokens) + batch.suffix)
    if "roi" in needs:
        if batch.roi_latents is not None:  # official code: mask in pixel space, then noise
            roi_x0 = batch.roi_latents
            rows.append(scheduler.add_noise(roi_x0, batch.noise.expand(n, -1, -1, -1), batch.timestep.expand(n)))
        else:
            roi_x0 = latent_masks[:, None] * batch.latents
            rows.append(latent_masks[:, None] * x_t)
        indices = batch.roi_prompt_indices or (0,) * n
        for k, token in enumerate(tokens.tokens):
            prompts.append(format_prompt(config.roi_prompts[indices[k]], object_word, [token]))
    model_input = torch.cat(rows)
    text, ids = encode_text(components, prompts)
    capture_on = "attention" in needs
    if capture_on:  # only row 0 (context) is read; the other rows record the same columns
        state.capture.set_tokens(tokens.positions(ids[:1], prompts[:1]).expand(len(prompts), -1))
    else:
        state.capture.set_tokens(None)
    timesteps = batch.timestep.expand(model_input.shape[0])
    # Latents stay fp32; the UNet sees its own dtype; losses are taken in fp32.
    eps = components.unet(model_input.to(state.model_dtype), timesteps, encoder_hidden_states=text).sample.float()

    step = StepTensors(noise=batch.noise, mask=union, pixel_masks=batch.masks, valid=batch.valid,
                       target=training_target(scheduler, batch.latents, batch.noise, batch.timestep))
    if roi_x0 is not None:  # each RoI row's own clean latents (ε is shared)
        step.roi_target = training_target(scheduler, roi_x0, batch.noise.expand(n, -1, -1, -1), batch.timestep.expand(n))
    offset = 0
    if "context" in needs:
        step.eps_context = eps[:1]
        offset = 1
    if "roi" in needs:
        step.eps_roi = eps[offset:]
    if capture_on:
        attention = state.capture.mean_map(state.attention_resolution, batch_index=slice(0, 1))
        if config.normalize_attention:
            attention = attention / attention.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        if config.attention_norm == "minmax":  # released code, learning.py L996-997
            low = attention.amin(dim=(-2, -1), keepdim=True)
            attention = (attention - low) / (attention.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
        step.attention = attention
        step.attention_masks = batch.masks[None]
    loss, values = state.objective(step)
    state.capture.clear()
    return loss, values


def capture_resolution(capture: AttentionCapture, components: SDComponents, latent_side: int | None = None) -> int:
    """Side of the coarsest captured layer's map at the latent size in use (``latent_side``; default the
    model's native one): 16 for SD 1.x up blocks at 512 px (the paper's), 4 at 128 px."""
    latent = latent_side or components.latent_size
    depth = len(components.unet.config.block_out_channels) - 1
    sides = []
    for name in capture.capture_layers:
        block = int(name.split(".")[1]) if name.startswith(("up_blocks", "down_blocks")) else None
        if name.startswith("up_blocks"):
            sides.append(latent // 2 ** (depth - block))
        elif name.startswith("down_blocks"):
            sides.append(latent // 2 ** block)
        else:
            sides.append(latent // 2 ** depth)
    return max(1, min(sides)) if sides else max(1, latent // 4)


def attention_side(config: LearnConfig, capture: AttentionCapture, components: SDComponents,
                   latent_side: int | None = None) -> int:
    """The side l_att compares maps at: configured, the latent grid in use, or the coarsest captured layer's."""
    if config.attention_resolution == "latent":
        return latent_side or components.latent_size
    return int(config.attention_resolution or capture_resolution(capture, components, latent_side))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def prepare_training(components: SDComponents, source: ConceptSource, config: LearnConfig,
                     capture: AttentionCapture | None = None) -> tuple[TrainState, list[LatentBank]]:
    """What :func:`learn_concept` sets up before its first step: the concept tokens, the attention processors
    (unless ``capture`` is given), the objective, and one latent bank per source image. The learning-loop
    benchmark builds its fused step from the same call, so it times exactly the loop's step."""
    device = components.unet.device
    n_tokens = source.n_tokens
    token_names = [config.placeholder] if n_tokens == 1 else [
        config.placeholder.replace("*", f"{k + 1}*") if "*" in config.placeholder else f"{config.placeholder}{k + 1}"
        for k in range(n_tokens)
    ]
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, token_names,
                           [config.init_word or source.object_word] * n_tokens)
    if capture is None:
        capture = AttentionCapture(
            components.unet, config.capture_layers, train_kv=config.train_kv, train_q_out=config.train_q_out,
            train_layers=config.train_layers,
        )
    if config.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
    if config.compile_unet:
        components.unet.compile()
    objective = Objective(config.terms)
    latent_side = source.images.shape[-1] // components.vae_scale_factor
    state = TrainState(components, tokens, capture, objective, config, attention_side(config, capture, components, latent_side))
    capture.same_resolution_only = config.same_resolution_maps

    images = source.images.to(device)
    image_masks = source.image_masks.to(device, images.dtype)
    # The VAE's device and dtype resolved once: photometric variants are encoded every few steps.
    vae_device, vae_dtype = components.vae.device, components.vae.dtype

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vae_moments(components, x, device=vae_device, dtype=vae_dtype)

    banks = [LatentBank(encode, image, masks) for image, masks in zip(images, image_masks)]
    return state, banks


def learn_concept(
    components: SDComponents,
    source: ConceptSource,
    config: LearnConfig,
    *,
    method: str = "clic",
    preset: str = "paper",
    seed: int = 0,
    step_fn: Callable[[TrainState, StepBatch, str], tuple[torch.Tensor, dict[str, float]]] = fused_step,
    out_dir: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    capture: AttentionCapture | None = None,
) -> LearnedConcept:
    """Learn concept token(s) (+ attention weights) from the source image(s) and mask(s).

    ``capture``: processors already installed on the UNet (e.g. a learned concept's K/V, so a region token
    w* trains against them); its trainable parameters follow the phases' attention learning rate.
    Without it, fresh processors are installed as ``config`` says.
    """
    config.validate()
    generator = seed_everything(seed)
    device = components.unet.device
    n_tokens = source.n_tokens
    state, banks = prepare_training(components, source, config, capture)
    tokens, capture, objective = state.tokens, state.capture, state.objective

    attention_params = capture.trainable_parameters()
    if config.lora:  # adapters: new parameters, taken out again after learning (clic.lora.remove_lora)
        from .lora import LORA_ADAPTER, add_lora

        lora = dict(config.lora)
        unet_params = add_lora(components.unet, LORA_ADAPTER, int(lora["rank"]), float(lora["alpha"]),
                               lora["unet_targets"], float(lora.get("dropout", 0.0)))
        text_params = add_lora(components.text_encoder, LORA_ADAPTER, int(lora["rank"]), float(lora["alpha"]),
                               lora["text_targets"], float(lora.get("dropout", 0.0)))
    else:
        unet_named = [(n, p) for n, p in components.unet.named_parameters() if "processor" not in n]
        text_named = [(n, p) for n, p in components.text_encoder.named_parameters()
                      if not n.endswith("vectors") and "base" not in n]
        unet_params, text_params = [p for _, p in unet_named], [p for _, p in text_named]
        if any(p.unet_lr > 0 for p in config.schedule()):  # fine-tuned in place: a lent model keeps the originals
            keep_originals(components, "unet", unet_named)
        if any(p.text_encoder_lr > 0 for p in config.schedule()):
            keep_originals(components, "text_encoder", text_named)
    loss_log: list[dict[str, float]] = []
    step_index = 0
    started = time.perf_counter()
    # Every tensor the loop changes: a resumable snapshot keeps them with the optimizer and every random state.
    trained = [tokens.parameter, *attention_params,
               *(unet_params if any(p.unet_lr > 0 for p in config.schedule()) else []),
               *(text_params if any(p.text_encoder_lr > 0 for p in config.schedule()) else [])]
    fingerprint = _resume_fingerprint(config, source, method, preset, seed, tokens.tokens)
    resume = latest_resume_state(out_dir, fingerprint) if out_dir is not None and config.checkpoint_every else None
    resumed_from = resume["step"] if resume is not None else None
    if resume is not None:
        with torch.no_grad():
            for parameter, value in zip(trained, resume["trained"], strict=True):
                parameter.copy_(value.to(parameter.device, parameter.dtype))
        loss_log = list(resume["loss_log"])
    accumulation = config.gradient_accumulation
    bar = tqdm(total=config.total_steps, desc=f"learn {method}/{preset}", disable=not progress, leave=False)
    # A half-precision model, or mixed_precision, runs the step under autocast; trained weights stay fp32.
    step_dtype = autocast_dtype(components.dtype, config.mixed_precision)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=step_dtype == torch.float16)  # disabled: a pass-through
    if resume is not None:
        bar.update(resume["step"])
    phase_end = 0
    for phase_index, phase in enumerate(config.schedule()):
        phase_start, phase_end = phase_end, phase_end + phase.steps
        if resume is not None and resume["step"] >= phase_end:  # a phase the interrupted learn finished
            step_index = phase_end
            continue
        groups = [{"params": [tokens.parameter], "lr": phase.token_lr, "weight_decay": config.token_weight_decay}]
        for p in attention_params:
            p.requires_grad_(phase.attention_lr > 0)
        if phase.attention_lr > 0 and attention_params:
            groups.append({"params": attention_params, "lr": phase.attention_lr, "weight_decay": config.weight_decay})
        for p in unet_params:
            p.requires_grad_(phase.unet_lr > 0)
        if phase.unet_lr > 0:
            groups.append({"params": unet_params, "lr": phase.unet_lr, "weight_decay": config.weight_decay})
        for p in text_params:
            p.requires_grad_(phase.text_encoder_lr > 0)
        if phase.text_encoder_lr > 0:
            groups.append({"params": text_params, "lr": phase.text_encoder_lr, "weight_decay": config.weight_decay})
        optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_cls(groups)
        clipped = [p for group in groups[0 if config.clip_token_grad else 1:] for p in group["params"]]
        components.unet.train(phase.unet_lr > 0)
        steps_done = 0
        if resume is not None:  # resumed inside this phase (or at its start)
            step_index = resume["step"]
            steps_done = step_index - phase_start
            if resume["phase"] == phase_index:  # the snapshot's optimizer belongs to this phase
                optimizer.load_state_dict(resume["optimizer"])
                scaler.load_state_dict(resume["scaler"])
            _set_random_states(generator, resume["random"])
            resume = None
        for _ in range(phase.steps - steps_done):
            optimizer.zero_grad(set_to_none=True)
            for micro in range(accumulation):
                batch = draw_batch(components, banks, config, objective, generator, device, n_tokens)
                with torch.autocast(device.type, dtype=step_dtype) if step_dtype is not None else nullcontext():
                    loss, values = step_fn(state, batch, source.object_word)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {float(loss)} at step {step_index}")
                # accelerate's accumulate(): each micro-step's loss is divided by the accumulation count
                scaler.scale(loss / accumulation).backward()
                values["step"] = step_index
                values["t"] = int(batch.timestep.item())
                if accumulation > 1:
                    values["micro_step"] = micro
                loss_log.append(values)
                if on_step is not None:
                    on_step(step_index, values)
            if config.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                # released CLiC code: token + attention weights (L1070-1076); Break-A-Scene: the UNet's only
                torch.nn.utils.clip_grad_norm_(clipped, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step_index += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.4f}", refresh=False)  # drawn with the bar's own (rate-limited) refresh
            if out_dir is not None and config.checkpoint_every and step_index % config.checkpoint_every == 0:
                write_checkpoint(Path(out_dir), step_index, _snapshot(state, source, config, method, preset, loss_log, seed),
                                 {"step": step_index, "phase": phase_index, "fingerprint": fingerprint,
                                  "trained": [p.detach().cpu().clone() for p in trained],
                                  "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                  "random": _random_states(generator), "loss_log": list(loss_log)})
    bar.close()
    components.unet.eval()
    if config.gradient_checkpointing:
        components.unet.disable_gradient_checkpointing()
    concept = _snapshot(state, source, config, method, preset, loss_log, seed)
    if config.lora:
        from .lora import ARRAY_PREFIX, LORA_ADAPTER, lora_state, remove_lora

        for name in ("unet", "text_encoder"):
            network = getattr(components, name)
            concept.arrays.update({f"{ARRAY_PREFIX}{name}.{k}": v for k, v in lora_state(network, LORA_ADAPTER).items()})
            remove_lora(network)  # the model as loaded (the adapters live on in the concept)
    if resumed_from is not None:
        concept.extras["resumed_from_step"] = resumed_from
    # Kept so later tasks that learn from the source again (RoI matching's w*) need only the concept.
    concept.arrays.update({"source_image": source.image.detach().cpu(), "source_masks": source.masks.detach().cpu()})
    concept.extras.update({
        "seconds": round(time.perf_counter() - started, 3),
        "latent_encodes": sum(bank.encode_count for bank in banks),
        "attention_resolution": state.attention_resolution,
    })
    merge_concept_embeddings(components.text_encoder)
    if out_dir is not None:
        concept.save(out_dir)
    return concept


def draw_batch(components: SDComponents, banks: list[LatentBank], config: LearnConfig, objective: Objective,
                generator: torch.Generator, device: torch.device, n_tokens: int) -> StepBatch:
    """One augmented source, t ~ U{0..T−1} and ε ~ N(0, I) (one image draws nothing extra, so single-image runs
    keep their exact random stream)."""
    bank = banks[0] if len(banks) == 1 else banks[int(torch.randint(len(banks), (1,), generator=generator))]
    latents_moments, aug_masks, aug_image, suffix, key = bank.sample(config.augment, generator)
    latents = sample_latents(components, latents_moments[None], generator)
    timestep = torch.randint(0, components.scheduler.config.num_train_timesteps, (1,), generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    roi_latents = None
    if config.roi_mask_space == "pixel" and "roi" in objective.needs:
        masked = torch.where(aug_masks[:, None] > 0.5, aug_image[None], torch.zeros_like(aug_image[None]))
        roi_latents = sample_latents(components, vae_moments(components, masked), generator)
    roi_prompt_indices = None
    if len(config.roi_prompts) > 1 and "roi" in objective.needs:  # released code: random.sample per step (L294)
        roi_prompt_indices = tuple(int(i) for i in torch.randint(len(config.roi_prompts), (n_tokens,), generator=generator))
    valid = image_region(key, latents.shape[-2:], aug_image.shape[-1] // latents.shape[-1]).to(device, latents.dtype)
    return StepBatch(latents, aug_masks, aug_image, suffix, timestep, noise, roi_latents,
                     roi_prompt_indices=roi_prompt_indices, valid=valid[None, None])


# ------------------------------------------------------------------------------- resumable snapshots
RESUME_FILE = "resume.pt"


def _random_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random state the loop draws from: the batch generator, torch's global CPU (and CUDA) state, Python's."""
    states = {"generator": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(generator: torch.Generator, states: Mapping[str, Any]) -> None:
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _resume_fingerprint(config: LearnConfig, source: ConceptSource, method: str, preset: str, seed: int,
                        token_names: Sequence[str]) -> str:
    """What a snapshot must have been learned from to be resumed: the settings, seed, tokens and source pixels
    (a folder reused for another learn starts afresh instead of resuming a stranger's state)."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps({"config": config.to_dict(), "method": method, "preset": preset, "seed": seed,
                                        "tokens": list(token_names)}, sort_keys=True, default=str).encode())
    for tensor in (source.images, source.image_masks):
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_checkpoint(out_dir: Path, step: int, concept: LearnedConcept, resume: Mapping[str, Any]) -> Path:
    """``out_dir/checkpoints/step-N/``: the concept so far plus ``resume.pt`` (trained tensors, optimizer, random
    states, loss log), written under a temporary name and renamed, so a kill leaves the previous one whole; only
    the newest keeps its ``resume.pt`` (with the optimizer's moments it is several times the trained weights)."""
    import os
    import shutil

    folder = out_dir / "checkpoints" / f"step-{step:05d}"
    temp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(temp, ignore_errors=True)
    concept.save(temp)
    torch.save(dict(resume), temp / RESUME_FILE)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temp, folder)
    for older in folder.parent.glob(f"step-*/{RESUME_FILE}"):
        if older.parent != folder:
            older.unlink(missing_ok=True)
    return folder


def latest_resume_state(out_dir: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest readable ``resume.pt`` under ``out_dir/checkpoints/`` learned from the same inputs, or None."""
    for path in sorted(Path(out_dir).glob(f"checkpoints/step-*/{RESUME_FILE}"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated by a kill outside the atomic rename, or foreign: the next older one
            continue
        if state.get("fingerprint") == fingerprint:
            return state
    return None


def _snapshot(state: TrainState, source: ConceptSource, config: LearnConfig, method: str, preset: str,
              loss_log: list[dict[str, float]], seed: int) -> LearnedConcept:
    full_unet = any(p.unet_lr > 0 for p in config.schedule())
    return LearnedConcept(
        method=method,
        preset=preset,
        tokens=list(state.tokens.tokens),
        object_word=source.object_word,
        vectors=state.tokens.vectors(),
        attention_state=state.capture.state_dict(),
        attention_layers=list(state.capture.unet.attn_processors),
        train_kv=config.train_kv,
        train_q_out=config.train_q_out,
        model_id=state.components.model_id,
        weights_hash=state.components.weights_hash,
        config={**config.to_dict(), "seed": seed},
        loss_log=list(loss_log),
        extras={"architecture": components_architecture(state.components)},  # a model given later must match it
        unet_state={k: v.detach().clone() for k, v in state.components.unet.state_dict().items() if "processor" not in k}
        if full_unet else {},
        text_encoder_state={k: v.detach().clone() for k, v in state.components.text_encoder.state_dict().items()
                            if "token_embedding" not in k}
        if any(p.text_encoder_lr > 0 for p in config.schedule()) else {},
    )
