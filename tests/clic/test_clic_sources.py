"""CLiC as its sources define it: reference tests whose expected values are written out here from raw
tensors (the UNet's own layer inputs and weights, the scheduler's ᾱ), never from clic.losses, Objective,
resize_mask or the function under test; one test per item of the official-code preset.

Sources: the paper (CVPR 2024) and the released code, github Mehdi0xC/clic at a5649f6.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from helpers import random_source, square_mask, unet_with_token_maps
from PIL import Image

from clic.attention import AttentionCapture
from clic.augment import apply_photometric, draw_geometric
from clic.learn import StepBatch, TrainState, attention_side, fused_step, learn_concept
from clic.losses import Objective
from clic.methods.base import get_method
from clic.methods.clic import OFFICIAL_SETTINGS, PAPER_SETTINGS
from clic.models import build_tiny
from clic.prediction import check_prediction_type, predicted_x0, training_target
from clic.tokens import ConceptTokens
from clic.transfer import TransferSettings, attention_guidance, transfer_concept

T = 420  # the fixed step's timestep


# --------------------------------------------------------------------------- independent attention maps
def run_with_token_maps(components, x, t, text, position, detach_outputs=False):
    """UNet output and, for every up-block cross-attention layer, the head-averaged softmax(QKᵀ/√d) column
    of ``position`` for batch row 0 as (side, side) (:func:`helpers.unet_with_token_maps`, computed from the layer's
    recorded inputs and its trained Q/K weights). ``detach_outputs``: the released att_processor L138-140."""
    out, maps = unet_with_token_maps(
        components, x, t, text, [position], blocks=("up_blocks",), detach_outputs=detach_outputs
    )
    return out, {name: columns[0] for name, columns in maps.items()}


def encode(components, prompt):
    ids = components.tokenizer(
        prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    return components.text_encoder(ids)[0], ids


def paper_map(maps, side):
    """Paper preset: layers averaged at the coarsest side, finer ones antialiased-bilinear down."""
    grids = [
        F.interpolate(m[None, None], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        if m.shape[-1] != side
        else m[None, None]
        for m in maps.values()
    ]
    return torch.stack(grids).mean(0)


def released_map(maps, side):
    """Released code: each layer bilinear to 64×64 (the latent grid), averaged (learning.py L971-978)."""
    return torch.stack(
        [F.interpolate(m[None, None], size=(side, side), mode="bilinear", align_corners=False) for m in maps.values()]
    ).mean(0)


# ------------------------------------------------------------------------------------ the fixed step
def fixed_step(preset):
    config = get_method("clic").learn_config(preset)
    components = build_tiny()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, ["<v*>"], [config.init_word or "chair"])
    capture = AttentionCapture(
        components.unet, config.capture_layers, train_kv=config.train_kv, train_q_out=config.train_q_out
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained copies away from the base weights, so using the wrong ones would show
        for p in capture.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    mask = torch.zeros(1, 64, 64)
    mask[:, 10:37, 18:47] = 1  # edges off the 4-pixel latent cells, so the resampling filter matters
    batch = StepBatch(
        latents=torch.randn(1, 4, 16, 16, generator=generator),
        masks=mask,
        image=torch.rand(3, 64, 64, generator=generator) * 2 - 1,
        suffix="",
        timestep=torch.tensor([T]),
        noise=torch.randn(1, 4, 16, 16, generator=generator),
        roi_latents=torch.randn(1, 4, 16, 16, generator=generator) if config.roi_mask_space == "pixel" else None,
        roi_prompt_indices=(3,) if len(config.roi_prompts) > 1 else None,
    )
    state = TrainState(
        components, tokens, capture, Objective(config.terms), config, attention_side(config, capture, components)
    )
    return state, batch


def test_paper_losses_on_a_fixed_step_follow_the_paper():
    state, batch = fixed_step("paper")
    _, values = fused_step(state, batch, "chair")
    state.capture.set_tokens(None)  # the reference passes below record nothing
    components, eps = state.components, batch.noise
    with torch.no_grad():
        ab = components.scheduler.alphas_cumprod[T]
        x_t = ab.sqrt() * batch.latents + (1 - ab).sqrt() * eps
        text, ids = encode(components, "A chair with <v*> style")
        position = int((ids[0] == state.tokens.token_ids[0]).nonzero()[0, 0])
        eps_c, maps = run_with_token_maps(components, x_t, batch.timestep, text, position)
        m_latent = F.avg_pool2d(batch.masks[None], 4)  # 64 px → 16 cells: each cell's covered share
        l_con = (((0.5 + 0.5 * m_latent) * (eps_c - eps)) ** 2).mean()  # α = 0.5
        side = 8  # the tiny UNet's coarsest up-block map
        m_att = F.interpolate(
            batch.masks[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )
        l_att = ((paper_map(maps, side) - m_att) ** 2).mean()  # raw probabilities
        text_r, _ = encode(components, "A photo of <v*>")
        eps_r = components.unet(m_latent * x_t, batch.timestep, encoder_hidden_states=text_r).sample
        l_roi = ((eps_r - eps) ** 2).mean()
    expected = {"con": l_con, "att": l_att, "roi": l_roi, "total": l_con + 0.5 * l_att + 0.5 * l_roi}
    for name, value in expected.items():
        assert values[name] == pytest.approx(float(value), rel=1e-4, abs=1e-7), name


def test_official_code_losses_on_a_fixed_step_follow_the_released_code():
    state, batch = fixed_step("official-code")
    _, values = fused_step(state, batch, "chair")
    state.capture.set_tokens(None)  # the reference passes below record nothing
    components, eps = state.components, batch.noise
    with torch.no_grad():
        ab = components.scheduler.alphas_cumprod[T]
        x_t = ab.sqrt() * batch.latents + (1 - ab).sqrt() * eps
        text, ids = encode(components, "a chair with <v*> style")  # reproduce.sh L13
        position = int((ids[0] == state.tokens.token_ids[0]).nonzero()[0, 0])
        eps_c, maps = run_with_token_maps(components, x_t, batch.timestep, text, position)
        m64 = F.interpolate(batch.masks[None], size=(16, 16), mode="bilinear", align_corners=False)  # L107
        weight = m64.clone()
        weight[weight < 0.05] = 0.25  # L113
        weight[..., 0, :] = weight[..., -1, :] = weight[..., :, 0] = weight[..., :, -1] = 0  # --noaug region, L230-232
        l_con = ((eps_c - eps) ** 2 * weight).sum() / (weight.sum() + 1e-10)  # L1003-1004
        attention = released_map(maps, 16)
        attention = (attention - attention.min()) / (attention.max() - attention.min())  # L996-997
        l_att = ((attention - m64) ** 2).mean()  # L998
        roi_x_t = ab.sqrt() * batch.roi_latents + (1 - ab).sqrt() * eps  # L940
        text_r, _ = encode(components, "<v*> on a blank background")  # template 3 of L270-277
        eps_r = components.unet(roi_x_t, batch.timestep, encoder_hidden_states=text_r).sample
        l_roi = ((eps_r - eps) ** 2 * m64).sum() / (m64.sum() + 1e-10)  # L1008-1010
    expected = {
        "con": l_con,
        "att": l_att,
        "roi": l_roi,
        "total": 0.5 * l_con + 0.25 * l_att + 0.25 * l_roi,
    }  # reproduce.sh L16-18
    for name, value in expected.items():
        assert values[name] == pytest.approx(float(value), rel=1e-4, abs=1e-7), name


# --------------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("preset", ["paper", "official-code"])
def test_guidance_latent_update_follows_its_source(preset):
    state, batch = fixed_step(preset)
    components, capture = state.components, state.capture
    settings = TransferSettings.from_dict(get_method("clic").task_settings("transfer", preset))
    prompt = settings.prompt.format(object="chair", tokens="<v*>")
    text, ids = encode(components, prompt)
    position = int((ids[0] == state.tokens.token_ids[0]).nonzero()[0, 0])
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(9))
    t = torch.tensor(700)
    pixel_mask = batch.masks[None]
    official = preset == "official-code"
    target = torch.ones_like(pixel_mask) if official else pixel_mask
    resolution = 16 if official else 8
    with torch.no_grad():
        updated = attention_guidance(
            capture,
            components,
            latents,
            t,
            text,
            torch.tensor([[position]]),
            target,
            settings.eta,
            resolution,
            settings.guidance,
            settings.detach_attention_outputs,
        )
    x = latents.clone().requires_grad_(True)
    _, maps = run_with_token_maps(components, x, t, text, position, detach_outputs=official)
    if official:  # transfer.py L116-117, L136-143: one step of a fresh Adam, lr 0.001 × 10, on MSE to ones
        energy = ((released_map(maps, 16) - 1) ** 2).mean()
        (grad,) = torch.autograd.grad(energy, x)
        expected = latents - 0.01 * grad / (grad.abs() + 1e-8)  # Adam's first step: m̂ = g, v̂ = g²
    else:  # paper §3.2: x − η ∇‖CA(v*) − M‖², η = 1
        m_att = F.interpolate(pixel_mask, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
        energy = ((paper_map(maps, 8) - m_att) ** 2).sum()
        (grad,) = torch.autograd.grad(energy, x)
        expected = latents - 1.0 * grad
    assert grad.abs().max() > 0 and not torch.equal(updated, latents)
    # Adam's 1e-8 ε meets gradients of ~1e-8 on the tiny model: float noise there moves an element by ~1e-5
    torch.testing.assert_close(updated, expected.detach(), rtol=1e-4, atol=5e-5 if official else 1e-6)


# ------------------------------------------------------------------------------------------ transfer
@pytest.fixture(scope="module")
def concept_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("concept")
    get_method("clic").learn(
        build_tiny(), random_source(1), overrides={"steps": 2}, seed=0, out_dir=out, progress=False
    )
    return out


def record_unet_calls(monkeypatch):
    calls = []
    forward = UNet2DConditionModel.forward

    def recording(self, sample, timestep, *args, **kwargs):
        calls.append((int(torch.as_tensor(timestep).reshape(-1)[0]), sample.shape[0]))
        return forward(self, sample, timestep, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording)
    return calls


def test_paper_t_start_counts_from_the_start_of_the_schedule(monkeypatch, concept_folder, tmp_path):
    """--t-start 10 --steps 50 (paper preset): the first UNet call is at timesteps[10] and the edit takes 40 steps
    (supplement B.3: T − t_start levels of noise added; 781 for t_start 10)."""
    from diffusers import DDIMScheduler

    from clic.cli import main

    calls = record_unet_calls(monkeypatch)
    Image.fromarray((torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy()).save(
        tmp_path / "target.png"
    )
    Image.fromarray((square_mask(16, 16, 32) * 255).byte().numpy()).save(tmp_path / "mask.png")
    assert (
        main(
            [
                "transfer",
                "--concept",
                str(concept_folder),
                "--image",
                str(tmp_path / "target.png"),
                "--mask",
                str(tmp_path / "mask.png"),
                "--object",
                "chair",
                "--t-start",
                "10",
                "--steps",
                "50",
                "--eta",
                "0",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    scheduler = DDIMScheduler.from_config(build_tiny().scheduler.config)
    scheduler.set_timesteps(50)
    denoising = [t for t, rows in calls if rows == 2]  # classifier-free guidance: 2 rows per denoising call
    assert denoising[0] == int(scheduler.timesteps[10]) == 781 and len(denoising) == 40
    assert denoising == [int(t) for t in scheduler.timesteps[10:]]
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert record["first_timestep"] == int(scheduler.timesteps[10]) and record["steps_run"] == 40


def released_ddim_timesteps(steps, train_steps=1000, offset=1):
    """DDIMScheduler.set_timesteps, 'leading' spacing with SD's steps_offset 1 (scheduler_config.json)."""
    return [i * (train_steps // steps) + offset for i in range(steps)][::-1]


def test_official_transfer_starts_as_the_released_loop(monkeypatch, concept_folder):
    """transfer.py L90-170 written out on raw tensors with a toy UNet (ε = 0.1·x + 1e-4·t), guidance off and DDIM
    η = 0 on both sides: the released loop calls the UNet from i = 0, overwrites the result with the re-noised
    target while i < t_start (L103-104) and blends the result of i = t_start − 1 in at i = t_start (L106)."""
    import numpy as np
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    import clic.transfer as transfer_module
    from clic.concept import LearnedConcept

    t_start, steps = 15, 50
    timesteps = released_ddim_timesteps(steps)
    assert timesteps[t_start - 1] == 701 and timesteps[t_start] == 681
    noises = [torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(100 + i)) for i in range(steps)]
    drawn = []

    def released_noise(shape, generator):  # our k-th re-noising is the released loop's i = t_start − 1 + k
        drawn.append(len(drawn))
        return noises[t_start - 1 + len(drawn) - 1].reshape(shape)

    monkeypatch.setattr(transfer_module, "target_noise", released_noise)
    toy = lambda x, t: 0.1 * x + 1e-4 * float(t)  # noqa: E731 - the toy UNet
    components = build_tiny()
    inputs = []

    def toy_unet(_module, args, kwargs, _output):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        inputs.append((int(torch.as_tensor(timestep).reshape(-1)[0]), sample[:1].detach().clone()))
        return UNet2DConditionOutput(sample=toy(sample, timestep))

    components.unet.register_forward_hook(toy_unet, with_kwargs=True)
    mask = square_mask(16, 16, 32)
    settings = {**get_method("clic").task_settings("transfer", "official-code"), "eta": 0.0, "ddim_eta": 0.0}
    assert settings["t_start"] == t_start and settings["first_step"] == "released"
    result = transfer_concept(
        components,
        LearnedConcept.load(concept_folder),
        torch.zeros(3, 64, 64),
        mask,
        "chair",
        TransferSettings.from_dict(settings),
        seed=0,
    )

    # the released loop, from raw tensors: ᾱ of SD's scaled_linear betas, PIL's soft mask (io_utils.py L50-57)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    soft = torch.from_numpy(np.array(Image.fromarray((mask * 255).byte().numpy()).resize((16, 16)))).float() / 255
    x_tg = result.target_latents
    latents, after_first_blend = None, None
    for i, t in enumerate(timesteps):
        if i <= 45:
            noisy_plus = alpha_bar[t].sqrt() * x_tg + (1 - alpha_bar[t]).sqrt() * noises[i]  # L101
            latents = noisy_plus if i < t_start else noisy_plus * (1 - soft) + latents * soft  # L103-106
        if i == t_start:
            after_first_blend = latents.clone()
        eps = toy(latents, t)  # guidance_scale · (ε_c − ε_u) = 0: both rows see the same latents
        previous = alpha_bar[t - steps_stride(steps)] if t - steps_stride(steps) >= 0 else alpha_bar[0]
        x0 = (latents - (1 - alpha_bar[t]).sqrt() * eps) / alpha_bar[t].sqrt()
        latents = previous.sqrt() * x0 + (1 - previous).sqrt() * eps  # DDIM, η = 0
    denoising = [(t, x) for t, x in inputs]
    assert denoising[0][0] == 701 == result.first_timestep and result.steps_run == steps - t_start + 1
    assert [t for t, _ in denoising] == timesteps[t_start - 1 :]
    torch.testing.assert_close(denoising[1][1], after_first_blend, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.latents, latents, atol=1e-4, rtol=1e-4)


def steps_stride(steps, train_steps=1000):
    return train_steps // steps


def test_transfer_records_its_timesteps_in_both_presets(concept_folder):
    from clic.concept import LearnedConcept

    for preset, t_start in (("paper", 10), ("official-code", 15)):
        assert get_method("clic").task_settings("transfer", preset)["t_start"] == t_start
    concept = LearnedConcept.load(concept_folder)
    result = transfer_concept(
        build_tiny(),
        concept,
        torch.zeros(3, 64, 64),
        square_mask(16, 16, 32),
        "chair",
        TransferSettings(t_start=15, steps=20, eta=0.0),
    )
    # DDIM 'leading' spacing with SD's steps_offset 1, written out: 20 steps → 951, 901, …, 1; index 15 → 201
    assert released_ddim_timesteps(20)[15] == 201
    assert (result.first_timestep, result.steps_run) == (201, 5)
    released = transfer_concept(
        build_tiny(),
        concept,
        torch.zeros(3, 64, 64),
        square_mask(16, 16, 32),
        "chair",
        TransferSettings(t_start=15, steps=50, eta=0.0, first_step="released"),
    )
    assert (released.first_timestep, released.steps_run) == (701, 36)  # transfer.py L100-106: i = 14 → τ 701


def test_official_transfer_blends_to_step_45_with_the_soft_mask_and_pastes_nothing(monkeypatch, concept_folder):
    """transfer.py L100 (blend while i ≤ 45), io_utils.py L50-57 (PIL-resized soft mask), no final paste,
    DDIM η = 1 (L85)."""
    from diffusers import DDIMScheduler

    from clic.concept import LearnedConcept

    steps_seen = []
    step = DDIMScheduler.step

    def recording(self, model_output, timestep, sample, *args, **kwargs):
        out = step(self, model_output, timestep, sample, *args, **kwargs)
        steps_seen.append((sample.clone(), out.prev_sample.clone(), kwargs.get("eta")))
        return out

    monkeypatch.setattr(DDIMScheduler, "step", recording)
    mask = square_mask(16, 16, 32)
    settings = {**get_method("clic").task_settings("transfer", "official-code"), "t_start": 43, "eta": 0.0}
    result = transfer_concept(
        build_tiny(),
        LearnedConcept.load(concept_folder),
        torch.zeros(3, 64, 64),
        mask,
        "chair",
        TransferSettings.from_dict(settings),
        seed=0,
    )
    pil = Image.fromarray((mask * 255).byte().numpy()).resize((16, 16))  # PIL's default filter, as load_mask
    soft = torch.from_numpy(__import__("numpy").array(pil)).float() / 255
    torch.testing.assert_close(result.latent_mask[0, 0], soft, atol=1e-6, rtol=0)
    assert ((soft > 0) & (soft < 1)).any()  # soft edges, not the any-coverage {0, 1} mask
    outside = (soft == 0).expand(1, 4, 16, 16)
    # first_step "released": the first step is i = 42 (t_start − 1, transfer.py L103-106), the next ones 43 … 49
    for (sample, _, eta), (_, previous, _), index in zip(steps_seen[1:], steps_seen[:-1], range(43, 50)):
        changed = not torch.equal(sample[outside], previous[outside])
        assert changed == (index <= 45), index  # blended (outside replaced by the noised target) only to 45
        assert eta == 1.0
    assert torch.equal(result.latents, steps_seen[-1][1])  # no paste after the loop


def test_official_guidance_runs_only_before_step_30(monkeypatch, concept_folder):
    """transfer.py L113: guidance while i < 30 (its UNet pass has one row; denoising has two); the loop's first
    step that counts is i = t_start − 1 (L103-106)."""
    from clic.concept import LearnedConcept

    calls = record_unet_calls(monkeypatch)
    settings = {**get_method("clic").task_settings("transfer", "official-code"), "t_start": 27}
    transfer_concept(
        build_tiny(),
        LearnedConcept.load(concept_folder),
        torch.zeros(3, 64, 64),
        square_mask(16, 16, 32),
        "chair",
        TransferSettings.from_dict(settings),
        seed=0,
    )
    timesteps = released_ddim_timesteps(50)  # DDIM leading spacing, steps_offset 1: 981, 961, …, 1
    assert [t for t, rows in calls if rows == 1] == timesteps[26:30]
    assert [t for t, rows in calls if rows == 2] == timesteps[26:]


# ------------------------------------------------------------------------------------ official items
def official(key):
    return next(s.value for s in OFFICIAL_SETTINGS if s.key == key)


def test_official_roi_prompts_are_the_released_templates_drawn_at_random():
    released = [
        "A photo of <x>",
        "A pattern of <x>",
        "<x>",
        "<x> on a blank background",
        "A photo of <x> on a blank background",
        "<x> style",
        "A photo of <x> style",
        "<x> style on a blank background",
    ]  # learning.py L270-277
    assert [t.format(token="<x>") for t in official("learn.roi_prompts")] == released
    drawn = []

    def recording_step(state, batch, object_word):
        drawn.append(batch.roi_prompt_indices[0])
        return fused_step(state, batch, object_word)

    config = get_method("clic").learn_config("official-code", {"steps": 24, "lr": 0.0})
    learn_concept(build_tiny(), random_source(1), config, step_fn=recording_step, progress=False)
    assert len(set(drawn)) >= 4  # random per step (L294), not one fixed prompt


def test_official_augmentation_is_noaug_brightness_jitter_and_flip():
    config = get_method("clic").learn_config("official-code").augment
    generator = torch.Generator().manual_seed(0)
    keys = [draw_geometric(config, generator) for _ in range(200)]
    assert all(k.zoom is None for k in keys)  # --noaug, reproduce.sh L21
    assert 60 < sum(k.flip for k in keys) < 140  # flip 0.5, learning.py L246
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    draws = torch.Generator().manual_seed(5)
    out, changed = apply_photometric(image, config, torch.Generator().manual_seed(5))
    torch.rand((), generator=draws)  # the "jitter or not" draw (p = 1)
    factor = 0.5 + 1.0 * float(torch.rand((), generator=draws))  # ColorJitter(brightness=0.5): U[0.5, 1.5]
    expected = (((image + 1) / 2) * factor).clamp(0, 1) * 2 - 1  # brightness only, no grayscale (L166-167)
    assert changed
    torch.testing.assert_close(out, expected)


def test_official_token_starts_from_ktn():
    config = get_method("clic").learn_config("official-code", {"steps": 1, "lr": 0.0})
    concept = learn_concept(build_tiny(), random_source(1), config, progress=False)
    fresh = build_tiny()
    ids = fresh.tokenizer("ktn", add_special_tokens=False).input_ids  # learning.py L578, L705-719
    expected = fresh.text_encoder.get_input_embeddings().weight[ids].mean(0)
    torch.testing.assert_close(concept.vectors["<v*>"], expected)


def test_official_optimizer_is_adamw_decaying_everything_and_clipping_at_one(monkeypatch):
    groups_seen, clips = [], []
    adamw = torch.optim.AdamW

    class Recording(adamw):
        def __init__(self, groups, *args, **kwargs):
            groups_seen.extend(groups)
            super().__init__(groups, *args, **kwargs)

    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        clips.append((len(parameters), max_norm))
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    config = get_method("clic").learn_config("official-code", {"steps": 2})
    learn_concept(build_tiny(), random_source(1), config, progress=False)
    assert groups_seen and all(g["weight_decay"] == 0.1 for g in groups_seen)  # learning.py L512, L831-836
    n_params = sum(len(g["params"]) for g in groups_seen)
    assert any(g["params"][0].shape[-1] == 32 and len(g["params"]) == 1 for g in groups_seen)  # the token
    assert clips == [(n_params, 1.0)] * 2  # learning.py L1070-1076
    preset = get_method("clic").learn_config("official-code")
    assert (
        preset.train_q_out and preset.lr == 1e-5 and preset.steps == 500
    )  # configs/default.yaml L48, reproduce.sh L14-15
    assert config.steps == 2


# ----------------------------------------------------------------------------------- prediction type
@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_learning_target_follows_the_prediction_type(model):
    state, batch = fixed_step("paper")
    components = build_tiny(model)
    state.components.scheduler = components.scheduler
    seen = {}

    class Recorder:
        needs = state.objective.needs

        def __call__(self, step):
            seen["target"], seen["roi_target"] = step.target, step.roi_target
            return step.eps_context.sum() * 0, {"total": 0.0}

    state.objective = Recorder()
    fused_step(state, batch, "chair")
    x0, eps = batch.latents, batch.noise
    ab = components.scheduler.alphas_cumprod[T]
    if model == "tiny":
        assert torch.equal(seen["target"], eps)
    else:
        assert components.scheduler.config.prediction_type == "v_prediction"
        torch.testing.assert_close(seen["target"], components.scheduler.get_velocity(x0, eps, batch.timestep))
        torch.testing.assert_close(seen["target"], ab.sqrt() * eps - (1 - ab).sqrt() * x0)
        m_latent = F.avg_pool2d(batch.masks[None], 4)
        torch.testing.assert_close(seen["roi_target"], ab.sqrt() * eps - (1 - ab).sqrt() * (m_latent * x0))


def test_x0_estimate_inverts_the_forward_process_for_both_types():
    """x̂₀ from a model output, against the DDPM/DDIM formulas written out on raw tensors (ᾱ from SD's
    scaled_linear betas): ε-prediction x̂₀ = (x_t − √(1−ᾱ) ε̂)/√ᾱ; v-prediction (Salimans & Ho 2022)
    v = √ᾱ ε − √(1−ᾱ) x₀ and x̂₀ = √ᾱ x_t − √(1−ᾱ) v̂."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    generator = torch.Generator().manual_seed(3)
    x0, eps, t = (
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.tensor([30, 950]),
    )
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    model_output = torch.randn(2, 4, 8, 8, generator=generator)  # any prediction, not the true one
    for model, expected_x0, true_output in (
        ("tiny", (x_t - (1 - ab).sqrt() * model_output) / ab.sqrt(), eps),
        ("tiny-v", ab.sqrt() * x_t - (1 - ab).sqrt() * model_output, ab.sqrt() * eps - (1 - ab).sqrt() * x0),
    ):
        scheduler = build_tiny(model).scheduler
        torch.testing.assert_close(scheduler.alphas_cumprod, alpha_bar)
        torch.testing.assert_close(predicted_x0(scheduler, x_t, model_output, t), expected_x0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(training_target(scheduler, x0, eps, t), true_output, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(predicted_x0(scheduler, x_t, true_output, t), x0, atol=1e-4, rtol=1e-4)


def test_unknown_prediction_type_is_one_line():
    scheduler = build_tiny().scheduler
    scheduler.register_to_config(prediction_type="sample")
    with pytest.raises(ValueError, match="unsupported scheduler prediction_type 'sample'") as err:
        check_prediction_type(scheduler)
    assert "\n" not in str(err.value)


def test_v_prediction_model_learns_transfers_and_generates(tmp_path):
    from clic.generate import GenerateSettings, generate_with_concept

    components = build_tiny("tiny-v")
    assert components.weights_hash != build_tiny("tiny").weights_hash  # other target: other jobs
    concept = get_method("clic").learn(components, random_source(1), overrides={"steps": 2}, progress=False)
    result = transfer_concept(
        build_tiny("tiny-v"),
        concept,
        torch.zeros(3, 64, 64),
        square_mask(16, 16, 32),
        "chair",
        TransferSettings(t_start=15, steps=20),
    )
    assert torch.isfinite(result.image).all() and result.steps_run == 5
    generated = generate_with_concept(
        build_tiny("tiny-v"), concept, "chair", GenerateSettings(steps=4, stage_one_steps=1, images=1)
    )
    assert torch.isfinite(generated.images).all()


# ------------------------------------------------------------------------------- tokens and presets
def test_a_prompt_without_the_concept_token_is_an_error_naming_it():
    components = build_tiny()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, ["<v*>"], ["chair"])
    _, ids = encode(components, "A photo of a chair")
    with pytest.raises(ValueError, match=r"'A photo of a chair' does not contain the concept token '<v\*>'"):
        tokens.positions(ids, ["A photo of a chair"])
    _, ids = encode(components, "a chair with <v*> style")
    assert tokens.positions(ids).tolist() == [[4]]  # after the start token, 'a', 'chair', 'with'


# Each preset value as its source states it, written here (not read from the declaration under test).
PAPER_VALUES = {
    "learn.steps": 500,
    "learn.lr": 1e-5,
    "learn.optimizer": "adam",  # §4 preamble: "500 steps … Adam, lr 1e-5"
    "learn.train_kv": True,
    "learn.train_q_out": False,  # §3.1: the token and the cross-attention K/V
    "learn.terms.con": {"weight": 1.0, "alpha": 0.5, "form": "paper"},  # Eq. (2)-(3), (5): α = 0.5, weight 1
    "learn.terms.att": {"weight": 0.5, "resize": "antialias"},  # Eq. (1), (5): λ = 0.5
    "learn.terms.roi": {"weight": 0.5, "form": "paper"},  # Eq. (4), (5): λ = 0.5
    "learn.capture_layers": "up",
    "learn.roi_mask_space": "latent",  # §3.1
    "learn.context_prompt": "A {object} with {tokens} style",  # supplement B.2: "A OBJECT with v* style"
    "learn.roi_prompts": ("A photo of {token}",),  # §3.1: c* = "A photo of v*"
    "transfer.steps": 50,
    "transfer.t_start": 10,
    "transfer.first_step": "paper",  # supplement B.3
    "transfer.blend_mask": "region",
    "transfer.guidance": "gradient",
    "transfer.attention_target": "mask",  # Eq. (6)-(7)
}
OFFICIAL_VALUES = {  # Mehdi0xC/clic at a5649f6
    "learn.steps": 500,
    "learn.lr": 1e-5,  # reproduce.sh L15, L14
    "learn.optimizer": "adamw",
    "learn.weight_decay": 0.1,
    "learn.token_weight_decay": 0.1,  # learning.py L512, L827-835
    "learn.max_grad_norm": 1.0,
    "learn.train_q_out": True,
    "learn.train_kv": True,  # L514; configs/default.yaml L48
    "learn.init_word": "ktn",  # learning.py L578: "ktn+pll+ucd", the first
    "learn.context_prompt": "a {object} with {tokens} style",  # reproduce.sh L13: "a $source with <x> style"
    "learn.roi_mask_space": "pixel",
    "learn.terms.con": {"weight": 0.5, "form": "released", "outside": 0.25, "threshold": 0.05, "border": 1},  # L17
    "learn.terms.att": {"weight": 0.25, "resize": "bilinear"},  # reproduce.sh L16: attention_lambda 25e-2
    "learn.terms.roi": {"weight": 0.25, "form": "released"},  # reproduce.sh L18: local_lambda 25e-2
    "learn.attention_norm": "minmax",
    "learn.attention_resolution": "latent",
    "learn.augment.p_zoom": 0.0,
    "learn.augment.p_grayscale": 0.0,  # reproduce.sh L21 --noaug; learning.py L167
    "learn.augment.jitter": 0.5,
    "learn.augment.jitter_kinds": ("brightness",),  # learning.py L166
    "transfer.steps": 50,  # configs/default.yaml L16: n_timesteps 50
    "transfer.t_start": 15,
    "transfer.first_step": "released",  # reproduce.sh L35; transfer.py L100-106
    "transfer.prompt": "a {object} with {tokens} style",  # reproduce.sh L34
    "transfer.blend_until": 45,
    "transfer.guidance_until": 30,  # transfer.py L100, L113
    "transfer.eta": 0.001 * 10,  # transfer.py L116 (0.001 × att_opt) with reproduce.sh L40 (att_opt=10)
    "transfer.guidance": "adam",
    "transfer.attention_target": "ones",
    "transfer.final_paste": False,
    "transfer.ddim_eta": 1.0,
    "transfer.guidance_scale": 7.5,  # transfer.py L85, L54
}


def test_each_preset_value_is_its_source_and_each_citation_exists(capsys):
    """The values that run equal the sources' values written above; every declared source string names a file
    and line inside a listed file of the repository it names, or a listed paper section, or says it is the
    project's choice (tests/source_index.py)."""
    from source_index import citation_problems

    from clic.cli import main

    method = get_method("clic")
    for name, settings, expected in (
        ("paper", PAPER_SETTINGS, PAPER_VALUES),
        ("official-code", OFFICIAL_SETTINGS, OFFICIAL_VALUES),
    ):
        config = method.learn_config(name).to_dict()
        transfer = TransferSettings.from_dict(method.task_settings("transfer", name)).to_dict()
        for key, value in expected.items():
            task, _, field = key.partition(".")
            resolved = config if task == "learn" else transfer
            for part in field.split("."):
                resolved = resolved[part]
            if isinstance(value, tuple):
                resolved = tuple(resolved)
            assert resolved == pytest.approx(value) if isinstance(value, float) else resolved == value, (name, key)
        assert {s.key for s in settings} >= set(expected), name
        for setting in settings:
            assert citation_problems(setting.source) == [], (name, setting.key, setting.source)
            if name == "official-code":  # a released file and line
                assert "Mehdi0xC/clic" in setting.source and " L" in setting.source, setting.key
    assert main(["methods", "show", "clic", "--preset", "official-code"]) == 0
    printed = capsys.readouterr().out
    assert "learn.terms.con" in printed and "learning.py L107-115" in printed
    assert main(["methods", "show", "clic", "--preset", "nope"]) == 2


def test_official_code_preset_runs_end_to_end():
    """learn → transfer → generate → match with the official-code preset."""
    method = get_method("clic")
    source = random_source(4)
    concept = method.learn(build_tiny(), source, preset="official-code", overrides={"steps": 3}, progress=False)
    assert concept.preset == "official-code" and all(math.isfinite(r["total"]) for r in concept.loss_log)
    edited = method.transfer(
        build_tiny(),
        concept,
        torch.zeros(3, 64, 64),
        square_mask(16, 16, 32),
        "chair",
        overrides={"steps": 20, "t_start": 15},
    )
    assert (
        torch.isfinite(edited.image).all() and edited.steps_run == 6
    )  # released start: one step more (transfer.py L103-106)
    generated = method.generate(
        build_tiny(), concept, "chair", overrides={"steps": 4, "stage_one_steps": 1, "images": 1}
    )
    assert torch.isfinite(generated.images).all()
    matched = method.match(
        build_tiny(),
        concept,
        torch.zeros(3, 64, 64),
        "chair",
        overrides={"steps": 2, "denoise_steps": 4, "read_steps": 2},
    )
    assert matched.mask.shape[-2:] == (64, 64)
