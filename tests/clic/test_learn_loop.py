"""What the learning loop does once per run rather than once per step, and the benchmark's step being the loop's.

No timing here (speed targets live in benchmarks/perf): these tests count work and compare values.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torchvision.transforms.v2 import functional as TF

from benchmarks.perf.learning import _loop_source, loop_step_case
from clic.augment import AugmentConfig, GeometricKey, LatentBank, apply_photometric
from clic.learn import learn_concept
from clic.methods.base import get_method
from clic.models import build_tiny


def counting_encoder(calls: list[torch.Tensor]):
    def encode(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.clone())
        return images.mean(dim=1, keepdim=True).repeat(1, 8, 1, 1)  # a stand-in "posterior": a fixed function

    return encode


def test_benchmark_step_is_the_loops_first_step():
    """benchmarks/perf `learn_loop` times the loop's own step: same state, same first batch, same loss."""
    config = get_method("clic").learn_config("paper", {"steps": 1})
    concept = learn_concept(build_tiny(), _loop_source(), config, progress=False)
    state, batches, step_fn, word = loop_step_case(1)
    loss, values = step_fn(state, batches[0], word)
    logged = concept.loss_log[0]
    assert int(batches[0].timestep) == logged["t"]
    assert batches[0].valid is not None  # the zoom-out padding mask the loop passes (make_case passes none)
    for term in ("con", "att", "roi", "total"):
        assert values[term] == logged[term], term
    assert float(loss.detach()) == logged["total"]


def test_grayscale_without_jitter_is_encoded_once_per_geometric_variant():
    calls: list[torch.Tensor] = []
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bank = LatentBank(counting_encoder(calls), image, torch.ones(1, 16, 16))
    config = AugmentConfig(p_flip=0.0, p_zoom=0.0, p_jitter=0.0, p_grayscale=1.0)
    generator = torch.Generator().manual_seed(0)
    drawn = [bank.sample(config, generator) for _ in range(12)]
    assert len(calls) == 2 and bank.encode_count == 2  # the plain variant, then its grayscale version once
    pixels = (image + 1) / 2
    gray = TF.rgb_to_grayscale(pixels, num_output_channels=3).clamp(0, 1) * 2 - 1  # supplement B: grayscale
    for latents, _, out_image, _, _ in drawn:
        torch.testing.assert_close(out_image, gray, rtol=0, atol=0)
        torch.testing.assert_close(latents, gray.mean(dim=0, keepdim=True).repeat(8, 1, 1), rtol=0, atol=0)


def test_jitter_is_encoded_every_time_it_is_drawn():
    calls: list[torch.Tensor] = []
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bank = LatentBank(counting_encoder(calls), image, torch.ones(1, 16, 16))
    config = AugmentConfig(p_flip=0.0, p_zoom=0.0, p_jitter=1.0, p_grayscale=0.5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        bank.sample(config, generator)
    assert len(calls) == 1 + 10  # the plain variant once, then every jittered draw (continuous factors)
    assert len({tuple(c.flatten()[:8].tolist()) for c in calls[1:]}) == 10


def test_photometric_draws_and_pixels_follow_the_augmentation_written_out():
    """The random stream and pixels of a colour draw, written out: jitter-or-not, one factor per kind in
    [1 − j, 1 + j], then grayscale-or-not (supplement B), on pixels mapped to [0, 1] and back."""
    config = AugmentConfig(p_jitter=0.6, p_grayscale=0.5, jitter=0.2)
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(20):
        out, changed = apply_photometric(image, config, ours)
        pixels = (image + 1) / 2
        jitter = float(torch.rand((), generator=reference)) < 0.6
        if jitter:
            b, c, s = (0.8 + 0.4 * float(torch.rand((), generator=reference)) for _ in range(3))
            pixels = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(pixels, b), c), s)
        gray = float(torch.rand((), generator=reference)) < 0.5
        if gray:
            pixels = TF.rgb_to_grayscale(pixels, num_output_channels=3)
        assert changed == (jitter or gray)
        torch.testing.assert_close(out, pixels.clamp(0, 1) * 2 - 1, rtol=0, atol=0)


def test_zoom_variant_of_grayscale_is_its_own_cache_entry():
    calls: list[torch.Tensor] = []
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bank = LatentBank(counting_encoder(calls), image, torch.ones(1, 16, 16))
    config = AugmentConfig(p_flip=0.5, p_zoom=0.0, p_jitter=0.0, p_grayscale=1.0)
    generator = torch.Generator().manual_seed(0)
    keys = {bank.sample(config, generator)[4] for _ in range(30)}
    assert keys == {GeometricKey(False, None, 1.0), GeometricKey(True, None, 1.0)}
    assert bank.encode_count == 4  # two geometric variants, each with one grayscale encode
    assert torch.equal(calls[1][0], calls[3][0].flip(-1)) or torch.equal(calls[3][0], calls[1][0].flip(-1))


def test_model_dtype_and_device_are_looked_up_once_per_run_not_per_step(monkeypatch):
    """diffusers finds a model's device/dtype by walking its modules: the loop resolves them before its steps."""
    lookups = {"unet": 0, "vae": 0}

    def counting(name: str, attribute: str, base: type):
        original = getattr(base, attribute)

        def getter(self):
            lookups[name] += 1
            return original.fget(self)

        return property(getter)

    monkeypatch.setattr(UNet2DConditionModel, "dtype", counting("unet", "dtype", UNet2DConditionModel))
    monkeypatch.setattr(UNet2DConditionModel, "device", counting("unet", "device", UNet2DConditionModel))
    monkeypatch.setattr(AutoencoderKL, "dtype", counting("vae", "dtype", AutoencoderKL))
    monkeypatch.setattr(AutoencoderKL, "device", counting("vae", "device", AutoencoderKL))
    method, source = get_method("clic"), _loop_source()
    counts = []
    for steps in (2, 8):
        components = build_tiny()
        lookups.update(unet=0, vae=0)
        concept = method.learn(components, source, overrides={"steps": steps}, progress=False)
        counts.append(dict(lookups))
        assert concept.extras["latent_encodes"] > 1
    assert counts[0] == counts[1], counts
