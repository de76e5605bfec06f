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
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .attention import AttentionCapture
from .augment import LatentBank
from .components import SDComponents
from .concept import LearnedConcept
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
    write_checkpoint,
)
from .learn_run import LearningRun, draw_batch
from .learn_step import StepBatch, TrainState, attention_side, capture_resolution, fused_step
from .losses import Objective
from .tokens import ConceptTokens, merge_concept_embeddings

# The loop's parts live in clic.learn_config / learn_inputs / learn_step / learn_resume / learn_run; importing them from here
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
    run = LearningRun(
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
    concept = _finished_concept(run, method, preset, seed, started)
    if out_dir is not None:
        concept.save(out_dir)
    return concept


def _finished_concept(run: LearningRun, method: str, preset: str, seed: int, started: float) -> LearnedConcept:
    """The learned concept (with its LoRA adapters' weights, taken off the model again), the source it was learned
    from, and the run's figures; the text encoder's vocabulary back to the model's own."""
    state, source, config, components = run.state, run.source, run.state.config, run.state.components
    concept = concept_snapshot(state, source, config, method, preset, run.loss_log, seed)
    if config.lora:
        from .lora import ARRAY_PREFIX, LORA_ADAPTER, lora_state, remove_lora

        for name in ("unet", "text_encoder"):
            network = getattr(components, name)
            concept.arrays.update(
                {f"{ARRAY_PREFIX}{name}.{k}": v for k, v in lora_state(network, LORA_ADAPTER).items()}
            )
            remove_lora(network)  # the model as loaded (the adapters live on in the concept)
    if run.resume_step is not None:
        concept.extras["resumed_from_step"] = run.resume_step
    # Kept so later tasks that learn from the source again (RoI matching's w*) need only the concept.
    concept.arrays.update({"source_image": source.image.detach().cpu(), "source_masks": source.masks.detach().cpu()})
    concept.extras.update(
        {
            "seconds": round(time.perf_counter() - started, 3),
            "latent_encodes": sum(bank.encode_count for bank in run.banks),
            "attention_resolution": state.attention_resolution,
        }
    )
    merge_concept_embeddings(components.text_encoder)
    return concept
