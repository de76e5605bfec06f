"""SingleInsert on the tiny model: the losses by hand, what each stage trains, and learn -> transfer -> generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clic.concept import LearnedConcept
from clic.learn import ConceptSource
from clic.methods.base import get_method
from clic.methods.single_insert import (
    LORA_FILE,
    LORA_PREFIX,
    SingleInsertConfig,
    StageInfo,
    background_loss,
    foreground_loss,
    install_lora,
    learn_single_insert,
    semantic_loss,
)
from clic.models import load_components, save_tiny

SIZE = 64
FAST = {"stage_one_steps": 2, "stage_two_steps": 2, "stage_one_batch_size": 2, "stage_two_batch_size": 2}


def source() -> ConceptSource:
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(3, SIZE, SIZE, generator=generator) * 2 - 1
    mask = torch.zeros(SIZE, SIZE)
    mask[16:40, 12:44] = 1
    return ConceptSource(image, mask, "chair")


def test_losses_match_hand_recomputation() -> None:
    alphas = torch.tensor([0.9, 0.5, 0.25])
    timesteps = torch.tensor([0, 2])
    x_t = torch.tensor([[[[1.0, 2.0]]]]).repeat(2, 1, 1, 1)  # (2, 1, 1, 2)
    eps = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 0.0]]]])
    from types import SimpleNamespace

    from clic.prediction import predicted_x0

    scheduler = SimpleNamespace(alphas_cumprod=alphas, config=SimpleNamespace(prediction_type="epsilon"))
    x0 = predicted_x0(scheduler, x_t, eps, timesteps)
    # row 0: ᾱ = 0.9; row 1: ᾱ = 0.25 -> (x − √0.75 ε) / 0.5
    expected = torch.tensor(
        [[[[(1 - 0.1**0.5 * 0.5) / 0.9**0.5, (2 + 0.1**0.5) / 0.9**0.5]]], [[[(1 - 0.75**0.5 * 2) / 0.5, 2 / 0.5]]]]
    )
    torch.testing.assert_close(x0, expected)

    pred = torch.tensor([[[[1.0, 3.0, -2.0, 0.0]]]])
    real = torch.tensor([[[[0.0, 1.0, -2.0, 4.0]]]])
    frozen = torch.tensor([[[[1.0, 0.0, 0.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.5, 0.0, 0.0]]]])
    # L_fg = mean(m (x̂ − x)²) = (1·1 + 0.5·4 + 0 + 0) / 4; L_bg = mean((1−m)(x̂ − x̄)²) = (0 + 0.5·9 + 4 + 1) / 4
    assert foreground_loss(pred, real, mask).item() == pytest.approx(3 / 4)
    assert background_loss(pred, frozen, mask).item() == pytest.approx(9.5 / 4)
    assert semantic_loss(pred, frozen).item() == pytest.approx((0 + 9 + 4 + 1) / 4)


def test_background_and_semantic_targets_get_no_gradient() -> None:
    pred, frozen = torch.randn(1, 4, 2, 2, requires_grad=True), torch.randn(1, 4, 2, 2, requires_grad=True)
    (background_loss(pred, frozen, torch.zeros(1, 1, 2, 2)) + semantic_loss(pred, frozen)).backward()
    assert frozen.grad is None and pred.grad is not None


def _base_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights under their plain names (peft wraps a targeted Linear as ``….base_layer``)."""
    return {
        k.replace(".base_layer", ""): v.detach().clone() for k, v in module.state_dict().items() if "lora_" not in k
    }


def test_stages_train_encoder_then_lora_and_leave_base_weights_bit_identical() -> None:
    components = load_components("tiny")
    before = {name: _base_state(getattr(components, name)) for name in ("unet", "vae", "text_encoder")}
    vocabulary = components.text_encoder.get_input_embeddings().weight.detach().clone()
    stages: list[tuple[str, set[int], set[int], set[str]]] = []

    def record(info: StageInfo) -> None:
        named = {
            id(p): f"{label}:{n}"
            for label in ("unet", "text_encoder")
            for n, p in getattr(components, label).named_parameters()
        }
        stages.append(
            (
                info.name,
                {id(p) for p in info.parameters},
                {id(p) for p in info.encoder.parameters()},
                {named[id(p)] for p in info.parameters if id(p) in named},
            )
        )
        trainable_model = [
            n
            for m in (components.unet, components.text_encoder, components.vae)
            for n, p in m.named_parameters()
            if p.requires_grad
        ]
        assert all("lora_" in n for n in trainable_model), trainable_model

    concept = learn_single_insert(components, source(), SingleInsertConfig().merged(FAST), on_stage=record)

    (one, one_ids, encoder_ids, one_model), (two, two_ids, _, two_model) = stages
    assert one == "stage_1" and one_ids == encoder_ids and not one_model  # stage I: encoder + projection only
    assert two == "stage_2" and encoder_ids < two_ids
    assert two_model and all("lora_" in n for n in two_model)  # stage II: + LoRA on both models
    assert any(n.startswith("text_encoder:") for n in two_model) and any(n.startswith("unet:") for n in two_model)
    for name, state in before.items():
        after = _base_state(getattr(components, name))
        if name == "text_encoder":  # the new token's row is appended to the vocabulary (checked below)
            after = {k: v for k, v in after.items() if "token_embedding" not in k}
            state = {k: v for k, v in state.items() if "token_embedding" not in k}
        assert after.keys() == state.keys()
        assert all(torch.equal(after[k], state[k]) for k in state), name
    embeddings = components.text_encoder.get_input_embeddings().weight
    assert torch.equal(embeddings[: len(vocabulary)], vocabulary)
    assert not hasattr(components.unet, "peft_config") or not components.unet.peft_config  # adapters removed
    # Both stages moved something: the token left its initial word, LoRA's up (B, initialised to 0) is non-zero.
    chair = vocabulary[components.tokenizer("chair", add_special_tokens=False).input_ids].mean(0)
    assert not torch.allclose(concept.vectors["<v*>"], chair)
    lora_b = [v for k, v in concept.arrays.items() if k.startswith(LORA_PREFIX) and k.endswith("up.weight")]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    assert {row["stage"] for row in concept.loss_log} == {1.0, 2.0}
    assert "si_sm" not in concept.loss_log[0] and "si_sm" in concept.loss_log[-1]


def test_learn_transfer_generate_and_stock_diffusers_loading(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    method = get_method("single_insert")
    folder = tmp_path / "concept"
    method.learn(load_components("tiny"), source(), overrides=FAST, out_dir=folder, progress=False)
    saved = load_file(str(folder / LORA_FILE))
    assert any(k.startswith("unet.") for k in saved) and any(k.startswith("text_encoder.") for k in saved)

    concept = LearnedConcept.load(folder)
    components = load_components("tiny")
    install_lora(components, concept)
    assert "single_insert" in components.unet.peft_config and "single_insert" in components.text_encoder.peft_config

    # A stock pipeline reading the folder (textual inversion + LoRA) has the same adapted UNet.
    save_tiny(tmp_path / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(tmp_path / "sd"), safety_checker=None, requires_safety_checker=False
    )
    pipe.load_lora_weights(str(folder))
    latents, text = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    with torch.no_grad():
        ours = components.unet(latents, 500, encoder_hidden_states=text).sample
        stock = pipe.unet(latents, 500, encoder_hidden_states=text).sample
        components.unet.disable_adapters()
        plain = components.unet(latents, 500, encoder_hidden_states=text).sample
        components.unet.enable_adapters()
    torch.testing.assert_close(ours, stock)
    assert not torch.allclose(ours, plain)  # the adapters change the UNet

    image, mask = source().image, source().masks[0]
    edited = method.transfer(components, concept, image, mask, "chair", overrides={"steps": 6, "t_start": 3})
    assert edited.image.shape == (3, SIZE, SIZE) and torch.isfinite(edited.image).all()
    outside = edited.latent_mask[0, 0] == 0
    torch.testing.assert_close(edited.latents[0][:, outside], edited.target_latents[0][:, outside])
    generated = method.generate(components, concept, "vase", overrides={"steps": 4, "stage_one_steps": 1}, seed=1)
    assert generated.images.shape == (1, 3, SIZE, SIZE) and "<v*>" in generated.prompt
    assert 0 <= float(generated.images.min()) and float(generated.images.max()) <= 1


def test_bad_inputs_fail_in_one_line() -> None:
    method = get_method("single_insert")
    with pytest.raises(ValueError, match="unknown SingleInsert option.*stage_three_steps"):
        method.learn_config(overrides={"stage_three_steps": 1})
    with pytest.raises(ValueError, match="loss term"):
        method.learn_config(overrides={"terms": {"nope": 1.0}}).validate()
    two_images = ConceptSource(torch.zeros(2, 3, SIZE, SIZE), torch.ones(2, 1, SIZE, SIZE), "chair")
    with pytest.raises(ValueError, match="one concept from one image"):
        learn_single_insert(load_components("tiny"), two_images, SingleInsertConfig().merged(FAST))
    with pytest.raises(FileNotFoundError, match="encoder_pretrained"):
        from clic.methods.single_insert import build_visual_tower

        build_visual_tower(SingleInsertConfig(encoder_model="ViT-B-32"), load_components("tiny"))
