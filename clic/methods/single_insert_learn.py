"""SingleInsert's two learning stages (:func:`learn_single_insert`): stage I trains the image encoder, stage II
the encoder and the LoRA adapters; each step goes through the shared loop's optimiser step
(:mod:`clic.optimizer_step`).

Part of :mod:`clic.methods.single_insert`, which re-exports these names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..components import SDComponents
from ..concept import LearnedConcept
from ..learn import ConceptSource, encode_text, format_prompt, sample_latents, seed_everything, tokenize, vae_moments
from ..losses import Objective, StepTensors, resize_mask
from ..optimizer_step import OptimizerStep, make_optimizer
from ..prediction import predicted_x0
from ..tokens import ConceptTokens, merge_concept_embeddings
from .single_insert_model import (
    LORA_FILE,
    LORA_PREFIX,
    ConceptImageEncoder,
    SingleInsertConfig,
    add_lora,
    build_visual_tower,
    lora_parameters,
    lora_state_dict,
)


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
        raise ValueError(
            f"SingleInsert learns one concept from one image; got {source.images.shape[0]} image(s) "
            f"and {source.n_tokens} mask(s)"
        )
    generator = seed_everything(seed)
    device = components.unet.device
    components.freeze()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, [config.placeholder], [source.object_word])
    token_text = _TokenText(components, tokens)
    encoder = ConceptImageEncoder(
        build_visual_tower(config, components), tokens.parameter.shape[-1], tokens.parameter[0].detach()
    ).to(device)
    inputs = _StageInputs.of(components, source, config, tokens, token_text, encoder)
    loss_log: list[dict[str, float]] = []
    started = time.perf_counter()
    stages = (
        ("stage_1", config.stage_one_steps, config.stage_one_lr, config.stage_one_batch_size),
        ("stage_2", config.stage_two_steps, config.stage_two_lr, config.stage_two_batch_size),
    )
    for stage, steps, lr, batch in stages:
        if steps:
            _learn_stage(inputs, stage, steps, lr, batch, generator, loss_log, progress_every, on_stage)

    return _finished_concept(components, source, config, tokens, encoder, inputs, loss_log, preset, seed, started)


def _learn_stage(
    inputs: _StageInputs,
    stage: str,
    steps: int,
    lr: float,
    batch: int,
    generator: torch.Generator,
    loss_log: list[dict[str, float]],
    progress_every: int,
    on_stage: Callable[[StageInfo], None] | None,
) -> None:
    """One stage's steps (stage II first adds the LoRA adapters), each through the shared loop's optimiser step
    (:mod:`clic.optimizer_step`: zeroing, the finite check, clipping, the update); the values go to ``loss_log``."""
    components, config, encoder = inputs.components, inputs.config, inputs.encoder
    adapted = stage == "stage_2"
    terms = dict(config.terms) if adapted else {k: v for k, v in config.terms.items() if k != "si_sm"}
    objective = Objective(terms)
    if adapted:
        add_lora(components, config.lora_rank, config.unet_lora_targets, config.text_lora_targets)
    parameters = list(encoder.parameters()) + (
        lora_parameters(components.unet) + lora_parameters(components.text_encoder) if adapted else []
    )
    if on_stage is not None:
        on_stage(StageInfo(stage, parameters, encoder, lr, batch, inputs.prompt))
    step = OptimizerStep(
        make_optimizer(config.optimizer, parameters, lr=lr, weight_decay=config.weight_decay),
        parameters,
        config.max_grad_norm,
    )
    for _ in range(steps):
        computed: dict[str, dict[str, float]] = {}

        def micro_step(_micro: int, computed: dict = computed) -> torch.Tensor:
            loss, computed["values"] = inputs.loss(objective, batch, adapted, generator)
            return loss

        step(micro_step, f"{stage} step {len(loss_log)}")
        values = computed["values"]
        values.update(step=len(loss_log), stage=1.0 if stage == "stage_1" else 2.0)
        loss_log.append(values)
        if progress_every and len(loss_log) % progress_every == 0:
            print(f"single_insert {stage} step {len(loss_log)}: {values['total']:.4f}")


def _finished_concept(
    components: SDComponents,
    source: ConceptSource,
    config: SingleInsertConfig,
    tokens: ConceptTokens,
    encoder: ConceptImageEncoder,
    inputs: _StageInputs,
    loss_log: list[dict[str, float]],
    preset: str,
    seed: int,
    started: float,
) -> LearnedConcept:
    """The concept: the encoder's output for the source as the token vector, the LoRA weights; the model as loaded."""
    with torch.no_grad():
        vector = encoder(inputs.image)[0].detach().cpu()
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
        arrays={
            **{LORA_PREFIX + k: v.cpu() for k, v in lora.items()},
            "source_image": source.image.detach().cpu(),
            "source_masks": source.masks.detach().cpu(),
        },
        extras={"seconds": round(time.perf_counter() - started, 3), "lora_file": LORA_FILE if lora else None},
    )


@dataclass
class _StageInputs:
    """What every step of both stages reads: the source's posterior and mask, the prompts, the encoder."""

    components: SDComponents
    config: SingleInsertConfig
    source: ConceptSource
    tokens: ConceptTokens
    encoder: ConceptImageEncoder
    token_text: _TokenText
    image: torch.Tensor  # (1, 3, R, R)
    moments: torch.Tensor  # the source's posterior, encoded once
    latent_mask: torch.Tensor
    prompt: str
    class_text_one: torch.Tensor

    @classmethod
    def of(
        cls,
        components: SDComponents,
        source: ConceptSource,
        config: SingleInsertConfig,
        tokens: ConceptTokens,
        token_text: _TokenText,
        encoder: ConceptImageEncoder,
    ) -> _StageInputs:
        image = source.images.to(components.unet.device)  # (1, 3, R, R)
        pixel_mask = source.image_masks.to(components.unet.device, image.dtype)  # (1, 1, R, R)
        moments = vae_moments(components, image)
        latent_mask = resize_mask(pixel_mask, moments.shape[-2:])
        prompt = format_prompt(config.prompt, source.object_word, tokens.tokens)
        with torch.no_grad():
            class_text_one = encode_text(
                components, [format_prompt(config.class_prompt, source.object_word, tokens.tokens)]
            )[0]
        return cls(
            components, config, source, tokens, encoder, token_text, image, moments, latent_mask, prompt, class_text_one
        )

    def loss(
        self, objective: Objective, batch: int, adapted: bool, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One step's loss: ``batch`` noised copies of the source, the frozen model's class-prompt prediction, the
        token prompt's (and, for si_sm, the adapted class prompt's) prediction; x̂₀ follows the scheduler's
        prediction type (the released train.py reads every output as ε)."""
        components, config, source = self.components, self.config, self.source
        scheduler, device = components.scheduler, components.unet.device
        prompts = [self.prompt] * batch
        class_text = self.class_text_one.expand(batch, -1, -1)
        x0 = sample_latents(components, self.moments.expand(batch, -1, -1, -1), generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = scheduler.add_noise(x0, noise, timesteps)
        with torch.no_grad(), _adapters_disabled(components, adapted):
            eps_class = components.unet(x_t, timesteps, encoder_hidden_states=class_text).sample
        vector = self.encoder(self.image)
        text = self.token_text(prompts, vector)
        if "semantic" in objective.needs:  # one pass: token prompt rows, then adapted class-prompt rows
            adapted_class_text = encode_text(
                components, [format_prompt(config.class_prompt, source.object_word, self.tokens.tokens)]
            )[0].expand(batch, -1, -1)
            eps = components.unet(
                torch.cat([x_t, x_t]), timesteps.repeat(2), encoder_hidden_states=torch.cat([text, adapted_class_text])
            ).sample
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
        return objective(StepTensors(noise=noise, mask=self.latent_mask, extras=extras))


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
