"""EM token/mask learning (Rahman et al., "Visual Concept-driven Image Generation with Text-to-Image
Diffusion Model", 2024): learn concept tokens *and* their masks without a user mask.

Two phases (paper §3):
1. Token-only EM. E-step: each token's cross-attention map, averaged over *all* cross-attention layers and
   over ``attention_timesteps`` random timesteps (no gradient), min-max normalised, binarised at
   ``threshold`` and refined by a dense CRF with CutLER's settings (:data:`clic.crf.CUTLER`: 10 iterations,
   Gaussian 7/3, bilateral 10/50/5, unary from the softmax of the binary masks) → one mask per token.
   M-step: ``e_every`` optimisation steps of the tokens alone with the masked diffusion loss over the union of
   the masks + the cross-attention loss pulling each token's map toward its mask.
2. Joint: tokens + cross-attention K/V with the last E-step's masks held fixed (no E-step any more).
The first E-step runs before the first step, from the tokens' initial vectors (the init word; preset
``user-init`` starts from the user's masks instead). Preset ``tokens-only`` runs phase 1 only. Geometric augmentations are off: masks are
re-estimated on the unaugmented source and must stay aligned with it (colour jitter/grayscale stay on).

EM settings (:class:`EMSettings`) come from the preset's ``em`` entry and the ``em`` key of the learn
overrides (``method.learn(..., overrides={"steps": 40, "em": {"e_every": 10}})``; suite files accept only
LearnConfig keys under ``learn``, so suites pick EM settings by preset, e.g. ``smoke``).

The user mask, when the manifest has one, is used only for its count of tokens (default preset), so the
estimated masks can be scored against it; they are kept in the concept's ``arrays`` as
``estimated_mask_<k>`` (source resolution, {0, 1}: the last E-step's masks, which the final M-step
trained against) and the E-step count in ``extras``. Only the first source image is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..augment import AugmentConfig
from ..concept import LearnedConcept
from ..crf import CUTLER, DenseCRFSettings, refine_masks
from ..learn import (
    ConceptSource,
    LearnConfig,
    Phase,
    StepBatch,
    TrainState,
    encode_text,
    format_prompt,
    fused_step,
    learn_concept,
    vae_moments,
)
from ..match import threshold_map
from ..presets import Setting, preset_overrides, replaced
from ..settings import reject_unknown_keys
from .base import ESTIMATED_MASK_KEY, Method

LAMBDA_ATTENTION = 1e-2  # Break-A-Scene's reference value; the EM paper builds on its masked + attention losses


@dataclass(frozen=True)
class EMSettings:
    e_every: int = 100  # M-step length between E-steps (400 steps → 4 E-steps)
    attention_timesteps: int = 50  # random timesteps the E-step averages the maps over
    chunk: int = 10  # timesteps per UNet pass in the E-step (memory on SD at 512 px)
    threshold: float = 0.5  # on the min-max normalised map
    init_from_user_masks: bool = False  # preset user-init: the first masks are the user's
    crf: DenseCRFSettings = CUTLER

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EMSettings:
        reject_unknown_keys(cls, data, "EM setting(s)")
        data = dict(data)
        if isinstance(data.get("crf"), Mapping):
            data["crf"] = DenseCRFSettings(**{**asdict(CUTLER), **data["crf"]})
        settings = cls(**data)
        if settings.e_every <= 0 or settings.attention_timesteps <= 0 or settings.chunk <= 0:
            raise ValueError("EM e_every, attention_timesteps and chunk must be positive")
        if not 0.0 < settings.threshold < 1.0:
            raise ValueError(f"EM threshold must lie in (0, 1), got {settings.threshold}")
        return settings


@torch.no_grad()
def token_attention_maps(
    state: TrainState,
    image: torch.Tensor,
    object_word: str,
    timesteps: torch.Tensor,
    generator: torch.Generator,
    chunk: int,
) -> torch.Tensor:
    """Each token's cross-attention map (n, r, r) on ``image`` ((3, R, R) in [-1, 1]) averaged over
    ``timesteps``, with the context prompt and the tokens' current vectors."""
    components = state.components
    device = components.unet.device
    latents = vae_moments(components, image[None].to(device)).chunk(2, dim=1)[0] * components.vae.config.scaling_factor
    text, ids = encode_text(components, [format_prompt(state.config.context_prompt, object_word, state.tokens.tokens)])
    positions = state.tokens.positions(ids)
    total = None
    try:
        for start in range(0, len(timesteps), chunk):
            t = timesteps[start : start + chunk].to(device)
            noise = torch.randn((len(t), *latents.shape[1:]), generator=generator).to(device)
            x_t = components.scheduler.add_noise(latents.expand(len(t), -1, -1, -1), noise, t)
            state.capture.set_tokens(positions.expand(len(t), -1))
            components.unet(x_t, t, encoder_hidden_states=text.expand(len(t), -1, -1))
            maps = state.capture.mean_map(state.attention_resolution).sum(dim=0)
            total = maps if total is None else total + maps
    finally:
        state.capture.set_tokens(None)
    return total / len(timesteps)


def estimate_masks(
    state: TrainState, image: torch.Tensor, object_word: str, settings: EMSettings, generator: torch.Generator
) -> torch.Tensor:
    """The E-step: masks (n, R, R) in {0, 1} from the tokens' averaged cross-attention + dense CRF."""
    steps = state.components.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (settings.attention_timesteps,), generator=generator)
    raw = token_attention_maps(state, image, object_word, timesteps, generator, settings.chunk)
    soft, _ = threshold_map(raw.float().cpu(), image.shape[-2:], settings.threshold)
    return refine_masks((image.cpu().float() + 1) / 2, soft, settings.threshold, settings.crf)


class EMLoop:
    """The step function of an EM run: E-steps on schedule during the token phase (its first ``token_steps``
    steps), the fused M-step on the current masks; afterwards the masks stay fixed (the joint phase)."""

    def __init__(
        self,
        image: torch.Tensor,
        initial_masks: torch.Tensor | None,
        settings: EMSettings,
        seed: int,
        token_steps: int | None = None,
    ) -> None:
        self.image = image
        self.masks = initial_masks
        self.settings = settings
        self.token_steps = token_steps
        self.e_step_at: list[int] = []  # the steps an E-step ran before
        self.generator = torch.Generator().manual_seed(seed + 1)  # own stream: the M-step's draws are unchanged
        self.step_index = 0
        self.e_steps = 0

    def __call__(self, state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
        in_token_phase = self.token_steps is None or self.step_index < self.token_steps
        due = (
            in_token_phase
            and self.step_index % self.settings.e_every == 0
            and (self.step_index > 0 or self.masks is None)
        )
        if due:
            self.masks = estimate_masks(state, self.image, object_word, self.settings, self.generator)
            self.e_steps += 1
            self.e_step_at.append(self.step_index)
        self.step_index += 1
        loss, values = fused_step(state, replace(batch, masks=self.masks.to(batch.masks)), object_word)
        values["mask_area"] = float(self.masks.mean())
        return loss, values


RAHMAN = "Rahman et al. 2024 §3"
CUTLER_SOURCE = (
    "facebookresearch/CutLER maskcut/crf.py L11-16 (MAX_ITER 10, POS_W 7, POS_XY_STD 3, Bi_W 10, Bi_XY_STD 50, "
    "Bi_RGB_STD 5), L35-43 (unary_from_softmax of the binary masks, 10 iterations); "
    "kernels as our torch CRF (pydensecrf normalises them)"
)
DEFAULT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "learn.phases",
        ({"steps": 400, "token_lr": 5e-4}, {"steps": 400, "token_lr": 2e-6, "attention_lr": 2e-6}),
        f"{RAHMAN}: token-only EM, then tokens + cross-attention with the masks fixed; lengths and rates our "
        "choice (Break-A-Scene's 400 + 400 at 5e-4 / 2e-6)",
    ),
    Setting("learn.train_kv", True, f"{RAHMAN}: the joint phase trains the cross-attention weights"),
    Setting("learn.capture_layers", "all", f"{RAHMAN}: maps averaged over all cross-attention layers"),
    Setting("learn.terms.masked_diffusion", 1.0, f"{RAHMAN} (after Break-A-Scene): masked diffusion loss"),
    Setting(
        "learn.terms.att", LAMBDA_ATTENTION, f"{RAHMAN}: attention loss; λ 1e-2 from google/break-a-scene train.py L403"
    ),
    Setting(
        "learn.context_prompt",
        "a photo of a {object} with {tokens}",
        "google/break-a-scene train.py L533 ('a photo of <asset>') with the object word",
    ),
    Setting("learn.augment.p_flip", 0.0, "our choice: masks are re-estimated on the unaugmented source"),
    Setting("learn.augment.p_zoom", 0.0, "our choice: masks are re-estimated on the unaugmented source"),
    Setting("em.crf", {k: v for k, v in asdict(CUTLER).items() if k != "max_side"}, CUTLER_SOURCE),
    Setting("em.threshold", 0.5, "our choice: binarise the min-max normalised map at 0.5"),
    Setting("em.e_every", 100, "our choice: an E-step every 100 token-phase steps"),
    Setting("em.attention_timesteps", 50, "our choice: maps averaged over 50 random timesteps"),
)


@dataclass(frozen=True)
class EMLearnConfig(LearnConfig):
    """LearnConfig plus the EM settings (``em``: :class:`EMSettings` as a mapping), resolved with it."""

    MERGED: ClassVar[tuple[str, ...]] = (*LearnConfig.MERGED, "em")
    em: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["em"] = json_ready(self.em)
        return data


def json_ready(value: Any) -> Any:
    """Nested mappings and tuples as dicts and lists (EM's ``crf`` settings arrive as a dataclass or a dict)."""
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


class EMMasks(Method):
    name = "em_masks"
    description = "EM: tokens (+ cross-attention) and their masks learned alternately; masks from attention + dense CRF"
    trains = "token embeddings + cross-attention K/V (tokens-only: embeddings only); masks estimated"
    base_config = EMLearnConfig(
        phases=(Phase(steps=400, token_lr=5e-4), Phase(steps=400, token_lr=2e-6, attention_lr=2e-6)),
        train_kv=True,
        capture_layers="all",  # the E-step and l_att average the maps of every cross-attention layer
        terms={"masked_diffusion": 1.0, "att": LAMBDA_ATTENTION},
        context_prompt="a photo of a {object} with {tokens}",
        augment=AugmentConfig(p_flip=0.0, p_zoom=0.0),
    )
    declared_settings = {
        "default": DEFAULT_SETTINGS,
        "tokens-only": replaced(
            DEFAULT_SETTINGS,
            Setting(
                "learn.phases",
                ({"steps": 400, "token_lr": 5e-4},),
                "ablation (the project's choice): the token-only EM phase alone",
            ),
            Setting("learn.train_kv", False, "ablation (the project's choice): no cross-attention weights"),
        ),
        "user-init": DEFAULT_SETTINGS
        + (
            Setting("em.init_from_user_masks", True, "ablation (the project's choice): the first masks are the user's"),
        ),
        "smoke": replaced(
            DEFAULT_SETTINGS,
            Setting("em.e_every", 10, "the project's choice: CPU test scale, not a paper setting"),
            Setting("em.attention_timesteps", 8, "the project's choice: CPU test scale, not a paper setting"),
        ),
    }
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    default_preset = "default"
    estimates_masks = True
    sources = {setting.key: setting.source for setting in DEFAULT_SETTINGS}

    def em_settings(self, preset: str | None, overrides: Mapping[str, Any] | None = None) -> EMSettings:
        """The preset's EM settings, updated by the ``em`` entry of the learn overrides (a suite's ``learn: {em: ...}``)."""
        return EMSettings.from_dict({**self.task_settings("em", preset), **dict((overrides or {}).get("em", {}))})

    def learn_config(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> EMLearnConfig:
        """The learning config with the EM settings resolved into its ``em`` field, so a plan's resolved config
        (and every id and row made from it) says how the masks were estimated."""
        if isinstance(overrides, EMLearnConfig):  # already resolved
            return overrides
        config = super().learn_config(preset, {k: v for k, v in (overrides or {}).items() if k != "em"})
        return config.merged({"em": asdict(self.em_settings(preset, overrides))})

    def learn(
        self,
        components,
        source: ConceptSource,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> LearnedConcept:
        self.require("learn")
        config = self.resolve("learn", preset, overrides)
        settings = EMSettings.from_dict(config.em)
        image = source.images[0]
        initial = source.image_masks[0].float() if settings.init_from_user_masks else None
        loop = EMLoop(image, initial, settings, seed, token_steps=config.schedule()[0].steps)
        # The source's own masks are only placeholders for the bank: every step uses the loop's masks.
        placeholder = ConceptSource(image, torch.ones_like(source.image_masks[0]), source.object_word)
        concept = learn_concept(
            components,
            placeholder,
            config,
            method=self.name,
            preset=preset or self.default_preset,
            seed=seed,
            step_fn=loop,
            progress=progress,
        )
        final = loop.masks.cpu()
        for index, mask in enumerate(final):
            concept.arrays[ESTIMATED_MASK_KEY.format(index=index)] = mask.clone()  # safetensors refuses shared views
        concept.arrays["source_masks"] = final  # RoI matching learns w* against the estimated region
        concept.extras["em"] = {
            **asdict(settings),
            "e_steps": loop.e_steps,
            "e_step_at": loop.e_step_at,
            "token_steps": loop.token_steps,
        }
        if out_dir is not None:
            concept.save(out_dir)
        return concept
