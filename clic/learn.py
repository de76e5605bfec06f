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
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .attention import AttentionCapture
from .augment import LatentBank, image_region
from .components import SDComponents
from .concept import LearnedConcept
from .device import autocast_dtype
from .learn_config import LearnConfig, Phase, split_phases
from .learn_inputs import (
    ConceptSource,
    encode_text,
    format_prompt,
    indefinite_article,
    sample_latents,
    tokenize,
    vae_moments,
)
from .learn_resume import (
    RESUME_FILE,
    concept_snapshot,
    latest_resume_state,
    random_states,
    resume_fingerprint,
    set_random_states,
    write_checkpoint,
)
from .learn_step import StepBatch, TrainState, attention_side, capture_resolution, fused_step
from .losses import Objective
from .optimizer_step import OptimizerStep, make_optimizer
from .reuse import keep_originals
from .tokens import ConceptTokens, merge_concept_embeddings

# The loop's parts live in clic.learn_config / learn_inputs / learn_step / learn_resume; importing them from here
# still works (every method and test did so before the split).
__all__ = [
    "RESUME_FILE",
    "ConceptSource",
    "LearnConfig",
    "Phase",
    "StepBatch",
    "TrainState",
    "attention_side",
    "capture_resolution",
    "concept_snapshot",
    "draw_batch",
    "encode_text",
    "format_prompt",
    "fused_step",
    "indefinite_article",
    "latest_resume_state",
    "learn_concept",
    "prepare_training",
    "sample_latents",
    "seed_everything",
    "split_phases",
    "tokenize",
    "vae_moments",
    "write_checkpoint",
]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def prepare_training(
    components: SDComponents, source: ConceptSource, config: LearnConfig, capture: AttentionCapture | None = None
) -> tuple[TrainState, list[LatentBank]]:
    """What :func:`learn_concept` sets up before its first step: the concept tokens, the attention processors
    (unless ``capture`` is given), the objective, and one latent bank per source image. The learning-loop
    benchmark builds its fused step from the same call, so it times exactly the loop's step."""
    device = components.unet.device
    n_tokens = source.n_tokens
    token_names = (
        [config.placeholder]
        if n_tokens == 1
        else [
            config.placeholder.replace("*", f"{k + 1}*")
            if "*" in config.placeholder
            else f"{config.placeholder}{k + 1}"
            for k in range(n_tokens)
        ]
    )
    tokens = ConceptTokens(
        components.tokenizer, components.text_encoder, token_names, [config.init_word or source.object_word] * n_tokens
    )
    if capture is None:
        capture = AttentionCapture(
            components.unet,
            config.capture_layers,
            train_kv=config.train_kv,
            train_q_out=config.train_q_out,
            train_layers=config.train_layers,
        )
    if config.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
    if config.compile_unet:
        components.unet.compile()
    objective = Objective(config.terms)
    latent_side = source.images.shape[-1] // components.vae_scale_factor
    state = TrainState(
        components, tokens, capture, objective, config, attention_side(config, capture, components, latent_side)
    )
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
    state, banks = prepare_training(components, source, config, capture)
    run = _LearningRun(
        state,
        source,
        banks,
        generator,
        method=method,
        preset=preset,
        seed=seed,
        step_fn=step_fn,
        out_dir=out_dir,
        on_step=on_step,
    )
    started = time.perf_counter()
    resumed_from = run.resume_step
    bar = tqdm(total=config.total_steps, desc=f"learn {method}/{preset}", disable=not progress, leave=False)
    bar.update(resumed_from or 0)
    phase_end = 0
    for phase_index, phase in enumerate(config.schedule()):
        phase_start, phase_end = phase_end, phase_end + phase.steps
        run.learn_phase(phase_index, phase, phase_start, phase_end, bar)
    bar.close()
    components.unet.eval()
    if config.gradient_checkpointing:
        components.unet.disable_gradient_checkpointing()
    concept = concept_snapshot(state, source, config, method, preset, run.loss_log, seed)
    if config.lora:
        from .lora import ARRAY_PREFIX, LORA_ADAPTER, lora_state, remove_lora

        for name in ("unet", "text_encoder"):
            network = getattr(components, name)
            concept.arrays.update(
                {f"{ARRAY_PREFIX}{name}.{k}": v for k, v in lora_state(network, LORA_ADAPTER).items()}
            )
            remove_lora(network)  # the model as loaded (the adapters live on in the concept)
    if resumed_from is not None:
        concept.extras["resumed_from_step"] = resumed_from
    # Kept so later tasks that learn from the source again (RoI matching's w*) need only the concept.
    concept.arrays.update({"source_image": source.image.detach().cpu(), "source_masks": source.masks.detach().cpu()})
    concept.extras.update(
        {
            "seconds": round(time.perf_counter() - started, 3),
            "latent_encodes": sum(bank.encode_count for bank in banks),
            "attention_resolution": state.attention_resolution,
        }
    )
    merge_concept_embeddings(components.text_encoder)
    if out_dir is not None:
        concept.save(out_dir)
    return concept


def _trained_networks(components: SDComponents, config: LearnConfig) -> tuple[list[torch.nn.Parameter], ...]:
    """The UNet's and the text encoder's trainable parameters: LoRA adapters (new parameters, taken out again
    after learning: clic.lora.remove_lora) or the networks' own weights (a lent model keeps its originals)."""
    if config.lora:
        from .lora import LORA_ADAPTER, add_lora

        lora = dict(config.lora)
        unet_params = add_lora(
            components.unet,
            LORA_ADAPTER,
            int(lora["rank"]),
            float(lora["alpha"]),
            lora["unet_targets"],
            float(lora.get("dropout", 0.0)),
        )
        text_params = add_lora(
            components.text_encoder,
            LORA_ADAPTER,
            int(lora["rank"]),
            float(lora["alpha"]),
            lora["text_targets"],
            float(lora.get("dropout", 0.0)),
        )
        return unet_params, text_params
    unet_named = [(n, p) for n, p in components.unet.named_parameters() if "processor" not in n]
    text_named = [
        (n, p) for n, p in components.text_encoder.named_parameters() if not n.endswith("vectors") and "base" not in n
    ]
    if any(p.unet_lr > 0 for p in config.schedule()):  # fine-tuned in place: a lent model keeps the originals
        keep_originals(components, "unet", unet_named)
    if any(p.text_encoder_lr > 0 for p in config.schedule()):
        keep_originals(components, "text_encoder", text_named)
    return [p for _, p in unet_named], [p for _, p in text_named]


class _LearningRun:
    """One :func:`learn_concept` call between its steps: the trained tensors, the loss log, the step counter and
    the resumable snapshot it may have started from."""

    def __init__(
        self,
        state: TrainState,
        source: ConceptSource,
        banks: list[LatentBank],
        generator: torch.Generator,
        *,
        method: str,
        preset: str,
        seed: int,
        step_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]],
        out_dir: str | Path | None,
        on_step: Callable[[int, dict[str, float]], None] | None,
    ) -> None:
        self.state, self.source, self.banks, self.generator = state, source, banks, generator
        self.method, self.preset, self.seed, self.step_fn, self.on_step = method, preset, seed, step_fn, on_step
        self.out_dir = out_dir
        components, config = state.components, state.config
        self.device = components.unet.device
        self.attention_params = state.capture.trainable_parameters()
        self.unet_params, self.text_params = _trained_networks(components, config)
        # Every tensor the loop changes: a resumable snapshot keeps them with the optimizer and every random state.
        schedule = config.schedule()
        self.trained = [
            state.tokens.parameter,
            *self.attention_params,
            *(self.unet_params if any(p.unet_lr > 0 for p in schedule) else []),
            *(self.text_params if any(p.text_encoder_lr > 0 for p in schedule) else []),
        ]
        self.fingerprint = resume_fingerprint(config, source, method, preset, seed, state.tokens.tokens)
        self.resume = (
            latest_resume_state(out_dir, self.fingerprint) if out_dir is not None and config.checkpoint_every else None
        )
        self.resume_step = self.resume["step"] if self.resume is not None else None
        self.loss_log: list[dict[str, float]] = []
        self.step_index = 0
        if self.resume is not None:
            with torch.no_grad():
                for parameter, value in zip(self.trained, self.resume["trained"], strict=True):
                    parameter.copy_(value.to(parameter.device, parameter.dtype))
            self.loss_log = list(self.resume["loss_log"])
        # A half-precision model, or mixed_precision, runs the step under autocast; trained weights stay fp32.
        self.step_dtype = autocast_dtype(components.dtype, config.mixed_precision)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.step_dtype == torch.float16
        )  # disabled: a pass-through

    def phase_optimizer(self, phase: Phase) -> OptimizerStep:
        """The phase's trainable set (the rest frozen), its optimizer and what its clipping covers."""
        config = self.state.config
        groups = [
            {"params": [self.state.tokens.parameter], "lr": phase.token_lr, "weight_decay": config.token_weight_decay}
        ]
        # (attention: a group only when there are attention weights; the networks always have parameters)
        for params, lr, needs_params in (
            (self.attention_params, phase.attention_lr, True),
            (self.unet_params, phase.unet_lr, False),
            (self.text_params, phase.text_encoder_lr, False),
        ):
            for p in params:
                p.requires_grad_(lr > 0)
            if lr > 0 and (params or not needs_params):
                groups.append({"params": params, "lr": lr, "weight_decay": config.weight_decay})
        # released CLiC code clips token + attention weights (L1070-1076); Break-A-Scene the UNet's only
        clipped = [p for group in groups[0 if config.clip_token_grad else 1 :] for p in group["params"]]
        return OptimizerStep(
            make_optimizer(config.optimizer, groups),
            clipped,
            config.max_grad_norm,
            config.gradient_accumulation,
            self.scaler,
        )

    def learn_phase(self, phase_index: int, phase: Phase, phase_start: int, phase_end: int, bar: tqdm) -> None:
        if self.resume is not None and self.resume["step"] >= phase_end:  # a phase the interrupted learn finished
            self.step_index = phase_end
            return
        step = self.phase_optimizer(phase)
        self.state.components.unet.train(phase.unet_lr > 0)
        steps_done = 0
        if self.resume is not None:  # resumed inside this phase (or at its start)
            self.step_index = self.resume["step"]
            steps_done = self.step_index - phase_start
            if self.resume["phase"] == phase_index:  # the snapshot's optimizer belongs to this phase
                step.optimizer.load_state_dict(self.resume["optimizer"])
                self.scaler.load_state_dict(self.resume["scaler"])
            set_random_states(self.generator, self.resume["random"])
            self.resume = None
        for _ in range(phase.steps - steps_done):
            values = self.optimizer_step(step)
            self.step_index += 1
            bar.update(1)
            bar.set_postfix(
                loss=f"{values['total']:.4f}", refresh=False
            )  # drawn with the bar's own (rate-limited) refresh
            config = self.state.config
            if self.out_dir is not None and config.checkpoint_every and self.step_index % config.checkpoint_every == 0:
                self.checkpoint(phase_index, step)

    def optimizer_step(self, step: OptimizerStep) -> dict[str, float]:
        """One optimizer step of ``gradient_accumulation`` micro-steps; the last micro-step's logged values."""
        state, device, accumulation = self.state, self.device, self.state.config.gradient_accumulation
        drawn: dict[str, object] = {}

        def micro_step(micro: int) -> torch.Tensor:
            batch = draw_batch(
                state.components,
                self.banks,
                state.config,
                state.objective,
                self.generator,
                device,
                self.source.n_tokens,
            )
            with torch.autocast(device.type, dtype=self.step_dtype) if self.step_dtype is not None else nullcontext():
                loss, values = self.step_fn(state, batch, self.source.object_word)
            drawn.update(batch=batch, values=values)
            return loss

        def log(micro: int) -> None:
            values = drawn["values"]
            values["step"] = self.step_index
            values["t"] = int(drawn["batch"].timestep.item())
            if accumulation > 1:
                values["micro_step"] = micro
            self.loss_log.append(values)
            if self.on_step is not None:
                self.on_step(self.step_index, values)

        step(micro_step, f"step {self.step_index}", after_backward=log)
        return drawn["values"]

    def checkpoint(self, phase_index: int, step: OptimizerStep) -> None:
        state = self.state
        concept = concept_snapshot(state, self.source, state.config, self.method, self.preset, self.loss_log, self.seed)
        write_checkpoint(
            Path(self.out_dir),
            self.step_index,
            concept,
            {
                "step": self.step_index,
                "phase": phase_index,
                "fingerprint": self.fingerprint,
                "trained": [p.detach().cpu().clone() for p in self.trained],
                "optimizer": step.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "random": random_states(self.generator),
                "loss_log": list(self.loss_log),
            },
        )


def draw_batch(
    components: SDComponents,
    banks: list[LatentBank],
    config: LearnConfig,
    objective: Objective,
    generator: torch.Generator,
    device: torch.device,
    n_tokens: int,
) -> StepBatch:
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
        roi_prompt_indices = tuple(
            int(i) for i in torch.randint(len(config.roi_prompts), (n_tokens,), generator=generator)
        )
    valid = image_region(key, latents.shape[-2:], aug_image.shape[-1] // latents.shape[-1]).to(device, latents.dtype)
    return StepBatch(
        latents,
        aug_masks,
        aug_image,
        suffix,
        timestep,
        noise,
        roi_latents,
        roi_prompt_indices=roi_prompt_indices,
        valid=valid[None, None],
    )
