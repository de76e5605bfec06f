"""Fused vs naive learning step, and attention-capture cost, on the tiny model (issue: performance).

Both steps see identical inputs (latents, t, ε, masks, prompts) and share the same trainable weights, so
their losses must agree; the benchmark then times forward + backward of each.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from clic.attention import AttentionCapture
from clic.learn import LearnConfig, StepBatch, TrainState, attention_side, fused_step, vae_moments
from clic.losses import Objective
from clic.methods.base import get_method
from clic.models import SDComponents, build_tiny
from clic.tokens import ConceptTokens

from .naive import install_naive, naive_step


@dataclass
class StepCase:
    state: TrainState
    batch: StepBatch
    object_word: str = "chair"


ARCHES = ("tiny", "sd15", "sd21")  # tiny: clic.models.build_tiny; the others: clic.architectures (random weights)


def build_components(arch: str = "tiny", seed: int = 0, device: str = "cpu") -> SDComponents:
    """The tiny model, or a real SD architecture with seeded random weights (real shapes, meaningless numbers).

    ``device="meta"`` builds the architecture data-less in a second (shapes only: FLOPs and saved-tensor bytes).
    """
    if arch == "tiny":
        return build_tiny().to(device) if device != "cpu" else build_tiny()
    from clic.architectures import build_random

    with tempfile.TemporaryDirectory(prefix=f"clic-{arch}-tokenizer-") as tokenizer_dir, torch.device(device):
        return build_random(arch, tokenizer_dir, seed)  # the tokenizer is loaded; its files are not needed after


def make_case(
    resolution: int, seed: int = 0, config: LearnConfig | None = None, arch: str = "tiny", device: str = "cpu"
) -> StepCase:
    config = config or get_method("clic").learn_config("paper")
    components = build_components(arch, seed, device)
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, ["<v*>"], ["chair"])
    capture = AttentionCapture(
        components.unet, config.capture_layers, train_kv=config.train_kv, train_q_out=config.train_q_out
    )
    generator = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, resolution, resolution, generator=generator) * 2 - 1).to(device)
    mask = torch.zeros(1, resolution, resolution)
    mask[:, resolution // 8 : resolution // 2, resolution // 4 : 3 * resolution // 4] = 1
    latents = vae_moments(components, image[None]).chunk(2, dim=1)[0] * components.vae.config.scaling_factor
    batch = StepBatch(
        latents=latents,
        masks=mask.to(device),
        image=image,
        suffix="",
        timestep=torch.tensor([420], device=device),
        noise=torch.randn(latents.shape, generator=generator).to(device),
    )
    attention_resolution = latents.shape[-1] // 2  # the coarsest up-block layer of the tiny UNet
    if arch != "tiny":  # as learn_concept: the coarsest captured layer's side at this latent size
        attention_resolution = attention_side(config, capture, components, latents.shape[-1])
    return StepCase(
        TrainState(components, tokens, capture, Objective(config.terms), config, attention_resolution), batch
    )


def parameters(case: StepCase) -> list[torch.Tensor]:
    return [case.state.tokens.parameter, *case.state.capture.trainable_parameters()]


def fused_loss(case: StepCase) -> tuple[torch.Tensor, dict[str, float]]:
    return fused_step(case.state, case.batch, case.object_word)


@contextmanager
def naive_processors(case: StepCase) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Store-everything processors for the duration; then the fused ones (same trained weights) again."""
    store = install_naive(case.state)
    try:
        yield store
    finally:
        unet = case.state.components.unet
        fused = case.state.capture.processors
        unet.set_attn_processor({name: fused.get(name) or AttnProcessor2_0() for name in unet.attn_processors})


def naive_loss(case: StepCase) -> tuple[torch.Tensor, dict[str, float]]:
    with naive_processors(case) as store:
        return naive_step(case.state, case.batch, case.object_word, store)


def time_step(step, case: StepCase, repeats: int, warmup: int = 2) -> float:
    """Median seconds of forward + backward of one step."""
    params = parameters(case)
    times = []
    for index in range(warmup + repeats):
        for p in params:
            p.grad = None
        started = time.perf_counter()
        loss, _ = step(case)
        loss.backward()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2]


def time_naive(case: StepCase, repeats: int, warmup: int = 2) -> float:
    with naive_processors(case) as store:
        return time_step(lambda c: naive_step(c.state, c.batch, c.object_word, store), case, repeats, warmup)


def capture_off_case(resolution: int, seed: int = 0) -> StepCase:
    """The same step without the attention term: capture records nothing."""
    return make_case(resolution, seed, LearnConfig(terms={"con": {"weight": 1.0, "alpha": 0.5}, "roi": 0.5}))


def branch_passes(case: StepCase, batched: bool) -> torch.Tensor:
    """Only the two branches' text + UNet passes (capture off), as one batch of 2 or as two of 1.

    Their time ratio is the most that fusing the branches can save when the FLOPs are the same: the
    ceiling of the fused speedup on this machine, apart from what the naive attention store costs.
    """
    from clic.learn import encode_text
    from clic.losses import resize_mask

    state, batch = case.state, case.batch
    state.capture.set_tokens(None)
    x_t = state.components.scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    rows = [x_t, resize_mask(batch.masks[None], x_t.shape[-2:])[0][:, None] * x_t]  # context, RoI
    prompts = ["A chair with <v*> style", "A photo of <v*>"]
    unet = state.components.unet
    if batched:
        text, _ = encode_text(state.components, prompts)
        return unet(torch.cat(rows), batch.timestep.expand(2), encoder_hidden_states=text).sample.square().mean()
    total = torch.zeros(())
    for row, prompt in zip(rows, prompts):
        text, _ = encode_text(state.components, [prompt])
        total = total + unet(row, batch.timestep, encoder_hidden_states=text).sample.square().mean()
    return total


def batching_ceiling(resolution: int, repeats: int) -> dict[str, float]:
    case = make_case(resolution)
    one = lambda c: (branch_passes(c, batched=True), {})  # noqa: E731
    two = lambda c: (branch_passes(c, batched=False), {})  # noqa: E731
    batched_times, separate_times = [], []
    for _ in range(3):
        batched_times.append(time_step(one, case, repeats))
        separate_times.append(time_step(two, case, repeats))
    batched_s, separate_s = sorted(batched_times)[1], sorted(separate_times)[1]
    return {
        "resolution": resolution,
        "batched_ms": batched_s * 1000,
        "separate_ms": separate_s * 1000,
        "ceiling": separate_s / batched_s,
    }
