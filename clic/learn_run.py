"""One call of the shared learning loop between its steps (:class:`LearningRun`): the trained tensors and their
optimiser per phase (clipping, accumulation, fp16 loss scaling through :mod:`clic.optimizer_step`), the batch each
step draws, the loss log, and the resumable snapshots it writes and starts from. :func:`clic.learn.learn_concept`
runs it; the parts of one step are :mod:`clic.learn_step`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .augment import LatentBank, image_region
from .components import SDComponents
from .device import autocast_dtype
from .learn_config import LearnConfig, Phase
from .learn_inputs import ConceptSource, sample_latents, vae_moments
from .learn_resume import (
    concept_snapshot,
    latest_resume_state,
    random_states,
    resume_fingerprint,
    set_random_states,
    write_checkpoint,
)
from .learn_step import StepBatch, TrainState
from .losses import Objective
from .optimizer_step import OptimizerStep, make_optimizer
from .reuse import keep_originals


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


class LearningRun:
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
