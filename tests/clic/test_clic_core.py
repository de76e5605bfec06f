"""The mathematics of clic/: losses, attention capture, what trains, determinism, transfer, stock loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import random_source, square_mask

from clic.attention import AttentionCapture
from clic.concept import LearnedConcept, load_into_pipeline
from clic.generate import GenerateSettings, generate_with_concept
from clic.learn import ConceptSource, LearnConfig, encode_text
from clic.losses import (
    Objective,
    StepTensors,
    attention_loss,
    context_loss,
    diffusion_loss,
    masked_diffusion_loss,
    roi_loss,
)
from clic.methods.base import get_method
from clic.models import ModelNotFoundError, build_tiny, load_components, save_tiny
from clic.tokens import ConceptTokens
from clic.transfer import TransferSettings, transfer_concept

STEPS = 6


@pytest.fixture(scope="module")
def source() -> ConceptSource:
    return random_source(1)


@pytest.fixture(scope="module")
def learned(tmp_path_factory, source) -> tuple[LearnedConcept, Path]:
    out = tmp_path_factory.mktemp("concept")
    concept = get_method("clic").learn(
        build_tiny(), source, overrides={"steps": STEPS}, seed=0, out_dir=out, progress=False
    )
    return concept, out


# ------------------------------------------------------------------------------------------ losses
def test_losses_match_hand_computation():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    eps = torch.tensor([[[[0.0, 2.0], [1.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # differences 1, 0, 2, 3; soft mask (α = 0.5) weights 1, .5, 1, .5
    assert context_loss(pred, eps, mask, alpha=0.5).item() == pytest.approx((1 + 0 + 4 + 0.25 * 9) / 4)
    assert context_loss(pred, eps, mask, alpha=0.25).item() == pytest.approx((1 + 0 + 4 + 0.0625 * 9) / 4)
    assert diffusion_loss(pred, eps).item() == pytest.approx((1 + 0 + 4 + 9) / 4)
    assert roi_loss(pred, eps).item() == pytest.approx((1 + 0 + 4 + 9) / 4)
    assert masked_diffusion_loss(pred, eps, mask).item() == pytest.approx((1 + 4) / 4)
    # attention: a 2×2 map against a 4×4 mask area-resized to 2×2
    attn = torch.tensor([[[[0.5, 0.0], [1.0, 0.25]]]])
    big = torch.zeros(1, 1, 4, 4)
    big[..., :2, :2] = 1  # top-left cell full
    big[..., 2:, 2:3] = 1  # bottom-right cell half covered
    expected = ((0.5 - 1) ** 2 + 0 + 1 + (0.25 - 0.5) ** 2) / 4
    assert attention_loss(attn, big).item() == pytest.approx(expected)


def test_objective_weights_ablations_and_dotted_terms():
    step = StepTensors(
        noise=torch.zeros(1, 1, 2, 2),
        mask=torch.ones(1, 1, 2, 2),
        eps_context=torch.ones(1, 1, 2, 2),
        eps_roi=2 * torch.ones(1, 1, 2, 2),
        attention=torch.zeros(1, 1, 2, 2),
        attention_masks=torch.ones(1, 1, 2, 2),
    )
    total, values = Objective({"con": {"weight": 1.0, "alpha": 0.5}, "att": 0.5, "roi": 0.5})(step)
    assert values == {"con": 1.0, "att": 1.0, "roi": 4.0, "total": pytest.approx(1 + 0.5 + 2)}
    ablated = Objective({"con": 1.0, "att": 0.0, "roi": 0.5})
    assert "att" not in ablated.terms and ablated.needs == {"context", "roi"}
    custom = Objective({"mine": {"weight": 2.0, "fn": "clic.losses:_diffusion", "needs": ["context"]}})
    assert custom(step)[0].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown loss term"):
        Objective({"nope": 1.0})


# ------------------------------------------------------------------------------- attention capture
def test_captured_attention_equals_manual_softmax():
    components = build_tiny()
    capture = AttentionCapture(components.unet, "up")
    name = capture.capture_layers[0]
    attn_module = dict(components.unet.named_modules())[name.removesuffix(".processor")]
    inputs = {}

    def record(module, args, kwargs):
        inputs["hidden_states"] = kwargs.get("hidden_states", args[0] if args else None)
        inputs["encoder_hidden_states"] = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)

    attn_module.register_forward_pre_hook(record, with_kwargs=True)
    text, ids = encode_text(components, ["a photo of a chair"])
    capture.set_tokens([[4, 5]])
    with torch.no_grad():
        components.unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=text)
    hidden, context = inputs["hidden_states"], inputs["encoder_hidden_states"]
    heads, head_dim = attn_module.heads, attn_module.to_q.out_features // attn_module.heads
    q = attn_module.to_q(hidden).view(1, -1, heads, head_dim).transpose(1, 2)
    k = attn_module.to_k(context).view(1, -1, heads, head_dim).transpose(1, 2)
    manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1).mean(dim=1)[..., [4, 5]]
    recorded = capture.maps()[name]
    assert recorded.shape == manual.shape == (1, hidden.shape[1], 2)  # only the requested columns are kept
    torch.testing.assert_close(recorded, manual, rtol=1e-5, atol=1e-6)


def test_capture_does_not_change_the_unet_output():
    components = build_tiny()
    text, _ = encode_text(components, ["a photo of a chair"])
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([300])
    with torch.no_grad():
        plain = components.unet(x, t, encoder_hidden_states=text).sample
        capture = AttentionCapture(components.unet, "up", train_kv=True)
        capture.set_tokens([[4]])
        captured = components.unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------- training
def _parameters(components) -> dict[str, torch.Tensor]:
    named = {}
    for prefix, module in (("unet", components.unet), ("text", components.text_encoder), ("vae", components.vae)):
        for name, tensor in module.state_dict().items():
            named[f"{prefix}.{name}"] = tensor.detach().clone()
    return named


def test_only_the_token_row_and_kv_copies_change(source):
    components = build_tiny()
    before = _parameters(components)
    concept = get_method("clic").learn(components, source, overrides={"steps": STEPS}, seed=0, progress=False)
    after = _parameters(components)
    # Frozen weights: the UNet's own projections, VAE and text encoder are bit-identical.
    for name, tensor in before.items():
        if name.endswith("token_embedding.weight"):
            continue
        assert torch.equal(after[name], tensor), name
    embedding_key = next(k for k in after if k.endswith("token_embedding.weight"))
    embedding, vocabulary = after[embedding_key], before[embedding_key]
    assert torch.equal(embedding[: vocabulary.shape[0]], vocabulary)  # every old row bit-identical
    token_id = components.tokenizer.convert_tokens_to_ids("<v*>")
    init = ConceptTokens.word_vector(type("T", (), {"tokenizer": components.tokenizer})(), "chair", vocabulary)
    assert not torch.allclose(embedding[token_id], init)  # the token row moved
    # Only K/V copies of the cross-attention layers were trained (paper preset: no Q/out).
    keys = set(concept.attention_state)
    assert keys and all(k.endswith(("to_k_custom_diffusion.weight", "to_v_custom_diffusion.weight")) for k in keys)
    assert all(".attn2." in k for k in keys)
    unet_modules = dict(components.unet.named_modules())
    moved = 0
    for key, tensor in concept.attention_state.items():
        layer, _, param = key.partition(".processor.")
        original = getattr(unet_modules[layer], "to_k" if "to_k" in param else "to_v").weight
        moved += int(not torch.equal(tensor, original))
    assert moved == len(keys)


def test_same_seed_same_weights_and_different_seed_differs(source):
    runs = [
        get_method("clic").learn(build_tiny(), source, overrides={"steps": 4}, seed=s, progress=False)
        for s in (3, 3, 4)
    ]
    for a, b, same in ((runs[0], runs[1], True), (runs[0], runs[2], False)):
        equal = torch.equal(a.vectors["<v*>"], b.vectors["<v*>"]) and all(
            torch.equal(a.attention_state[k], b.attention_state[k]) for k in a.attention_state
        )
        assert equal is same
    assert [r["total"] for r in runs[0].loss_log] == [r["total"] for r in runs[1].loss_log]


def test_presets_differ_where_the_released_code_does():
    method = get_method("clic")
    paper, official = method.learn_config("paper"), method.learn_config("official-code")
    assert paper.terms == {
        "con": {"weight": 1.0, "alpha": 0.5, "form": "paper"},
        "att": {"weight": 0.5, "resize": "antialias"},
        "roi": {"weight": 0.5, "form": "paper"},
    }
    assert official.train_q_out and official.optimizer == "adamw" and official.weight_decay == 0.1
    assert official.terms["con"]["form"] == "released" and official.roi_mask_space == "pixel"
    assert len(official.roi_prompts) == 8
    with pytest.raises(ValueError, match="unknown preset"):
        method.learn_config("fast")
    with pytest.raises(ValueError, match="steps must be positive"):
        LearnConfig(steps=0).validate()


def test_latents_are_cached_per_geometric_variant(source):
    concept = get_method("clic").learn(
        build_tiny(),
        source,
        overrides={"steps": 30, "augment": {"p_jitter": 0.0, "p_grayscale": 0.0}},
        seed=0,
        progress=False,
    )
    # flip × {none, 3 zoom-in, 3 zoom-out} = at most 14 variants, whatever the number of steps
    assert concept.extras["latent_encodes"] <= 14


# --------------------------------------------------------------------------------------- transfer
def test_transfer_keeps_the_outside_and_guidance_raises_attention_inside(learned):
    concept, _ = learned
    generator = torch.Generator().manual_seed(5)
    target = torch.rand(3, 64, 64, generator=generator) * 2 - 1
    mask = square_mask(24, 8, 28)
    results = {}
    for eta in (0.0, 50.0):
        results[eta] = transfer_concept(
            build_tiny(), concept, target, mask, "chair", TransferSettings(t_start=5, steps=20, eta=eta), seed=0
        )
    for result in results.values():
        outside = result.latent_mask == 0
        assert outside.any() and (~outside).any()
        assert torch.equal(
            result.latents[outside.expand_as(result.latents)],
            result.target_latents[outside.expand_as(result.target_latents)],
        )
        inside = ~outside.expand_as(result.latents)
        assert not torch.equal(result.latents[inside], result.target_latents[inside])
    assert results[50.0].attention_in_mask > results[0.0].attention_in_mask


# ------------------------------------------------------------------------------ models and loading
def test_tiny_round_trips_through_a_diffusers_folder(tmp_path):
    save_tiny(tmp_path / "tiny")
    loaded = load_components(str(tmp_path / "tiny"))
    built = build_tiny()
    for a, b in zip(loaded.unet.parameters(), built.unet.parameters()):
        assert torch.equal(a, b)
    assert loaded.resolution == 64 and loaded.tokenizer("a chair").input_ids == built.tokenizer("a chair").input_ids
    # a saved tiny folder keeps its provenance: its numbers are labelled tiny-random, not by the folder's path
    assert not loaded.is_tiny and loaded.model_id == str(tmp_path / "tiny") and loaded.weights_label == "tiny-random"


def test_missing_hf_model_fails_fast_with_instructions(no_network):
    with pytest.raises(ModelNotFoundError, match=r"hf download CompVis/stable-diffusion-v1-4"):
        load_components("CompVis/stable-diffusion-v1-4")  # offline: no retries against the hub
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        load_components("./no/such/folder")


def test_stock_diffusers_loading_reproduces_our_outputs(tmp_path, learned):
    from diffusers import StableDiffusionPipeline

    _, concept_dir = learned
    save_tiny(tmp_path / "tiny")
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "tiny", safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    load_into_pipeline(pipeline, concept_dir)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    stock = pipeline(
        "a photo of a table, with <v*> style",
        latents=latents.clone(),
        num_inference_steps=8,
        guidance_scale=7.5,
        output_type="pt",
    ).images
    ours = generate_with_concept(
        load_components(str(tmp_path / "tiny")),
        LearnedConcept.load(concept_dir),
        "table",
        GenerateSettings(steps=8, stage_one_steps=0),
        latents=latents.clone(),
    )
    torch.testing.assert_close(ours.images, stock.cpu(), rtol=0, atol=1e-4)


def test_two_stage_generation_switches_weights(learned):
    concept, _ = learned
    components = build_tiny()
    plain = generate_with_concept(components, concept, "table", GenerateSettings(steps=6, stage_one_steps=0), seed=1)
    staged = generate_with_concept(components, concept, "table", GenerateSettings(steps=6, stage_one_steps=3), seed=1)
    assert plain.images.shape == staged.images.shape == (1, 3, 64, 64)
    assert not torch.equal(plain.images, staged.images)
    assert staged.prompt == "a photo of a table, with <v*> style"  # the article follows the word
