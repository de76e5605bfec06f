"""A lent model comes back exactly as loaded, without whole-model copies per job (clic.reuse)."""

from __future__ import annotations

import pytest
import torch

from clic.learn import ConceptSource
from clic.methods.base import get_method
from clic.models import build_tiny
from clic.reuse import ModelLender
from clic.transfer import TransferSettings, transfer_concept


def source() -> ConceptSource:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1
    return ConceptSource(torch.rand(3, 64, 64, generator=generator) * 2 - 1, mask, "chair")


def reference_outputs(components) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's ε and the text encoder's output for fixed inputs: equal outputs = an equal model."""
    generator = torch.Generator().manual_seed(1)
    ids = components.tokenizer(
        ["a photo of a chair"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        text = components.text_encoder(ids)[0]
        eps = components.unet(torch.randn(1, 4, 16, 16, generator=generator), 500, encoder_hidden_states=text).sample
    return eps, text


def test_a_lent_model_is_restored_after_learning_and_transfer():
    lender = ModelLender(build_tiny)
    expected = reference_outputs(build_tiny())
    first = lender.lend()
    assert first.unet is lender.pristine.unet and first.text_encoder is lender.pristine.text_encoder  # no copies
    assert first.tokenizer is not lender.pristine.tokenizer
    concept = get_method("clic").learn(first, source(), overrides={"steps": 2}, progress=False)
    second = lender.lend()  # restores the first loan
    assert "<v*>" not in second.tokenizer.get_vocab()
    assert len(second.tokenizer) == len(lender.pristine.tokenizer)
    eps, text = reference_outputs(second)
    torch.testing.assert_close(eps, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(text, expected[1], rtol=0, atol=0)
    transfer_concept(second, concept, source().image, source().masks[0], "chair", TransferSettings(steps=4, t_start=2))
    third = lender.lend()
    torch.testing.assert_close(reference_outputs(third)[0], expected[0], rtol=0, atol=0)
    assert lender.reloads == 0


def test_fine_tuned_weights_are_put_back_from_their_copies():
    """Break-A-Scene's original recipe trains the whole UNet and text encoder in place: only those are copied."""
    lender = ModelLender(build_tiny)
    expected = reference_outputs(build_tiny())
    components = lender.lend()
    get_method("break_a_scene").learn(
        components,
        source(),
        preset="original",
        overrides={
            "phases": [
                {"steps": 1, "token_lr": 1e-3},
                {"steps": 1, "token_lr": 1e-3, "attention_lr": 1e-3, "unet_lr": 1e-2, "text_encoder_lr": 1e-2},
            ],
            "prior": {"images": 1, "steps": 1},
        },
        progress=False,
    )
    changed = reference_outputs(components)[0]
    assert not torch.equal(changed, expected[0])  # the job did change the shared UNet
    restored = lender.lend()
    torch.testing.assert_close(reference_outputs(restored)[0], expected[0], rtol=0, atol=0)
    assert lender.reloads == 0


def inpainting_reference(components) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = components.tokenizer(
        ["a photo of a chair"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        text = components.text_encoder(ids)[0]
        return components.unet(torch.randn(1, 9, 16, 16, generator=generator), 500, encoder_hidden_states=text).sample


def test_lora_adapters_come_out_of_a_lent_model_without_a_reload():
    """RealFill's original (peft LoRA, rank 16, α 27) learns and transfers on a lent model; SingleInsert adds
    rank-4 adapters for its stage II and its transfer: the adapter layers leave the module tree, the lender
    finds the model as loaded (same parameter names, storage and versions) and reloads nothing."""
    from clic.lora import has_lora

    lender = ModelLender(lambda: build_tiny("tiny-inpaint"))
    expected = inpainting_reference(build_tiny("tiny-inpaint"))
    names = sorted(n for n, _ in lender.pristine.unet.named_parameters())
    components = lender.lend()
    concept = get_method("realfill").learn(
        components, source(), preset="original", overrides={"steps": 1, "gradient_accumulation": 1}, progress=False
    )
    assert any(k.startswith("lora/unet.") for k in concept.arrays)
    assert any(k.startswith("lora/text_encoder.") for k in concept.arrays)
    assert not has_lora(components.unet) and not has_lora(components.text_encoder)  # removed after learning
    components = lender.lend()
    get_method("realfill").transfer(
        components, concept, source().image, source().masks[0], "chair", overrides={"steps": 2, "t_start": 1}
    )
    assert has_lora(components.unet)  # installed for the job
    restored = lender.lend()
    assert not has_lora(restored.unet) and sorted(n for n, _ in restored.unet.named_parameters()) == names
    torch.testing.assert_close(inpainting_reference(restored), expected, rtol=0, atol=0)
    assert lender.reloads == 0

    lender = ModelLender(build_tiny)
    components = lender.lend()
    concept = get_method("single_insert").learn(
        components,
        source(),
        overrides={"stage_one_steps": 1, "stage_one_batch_size": 1, "stage_two_steps": 1, "stage_two_batch_size": 1},
        progress=False,
    )
    components = lender.lend()
    get_method("single_insert").transfer(
        components, concept, source().image, source().masks[0], "chair", overrides={"steps": 2, "t_start": 1}
    )
    lender.lend()
    assert lender.reloads == 0


def test_an_undeclared_change_makes_the_lender_reload():
    lender = ModelLender(build_tiny)
    components = lender.lend()
    with torch.no_grad():
        next(components.unet.parameters()).add_(1.0)  # changed in place without keep_originals
    restored = lender.lend()
    assert lender.reloads == 1
    torch.testing.assert_close(reference_outputs(restored)[0], reference_outputs(build_tiny())[0], rtol=0, atol=0)


@pytest.mark.parametrize("device", ["meta"])
def test_lending_works_on_another_device(device):
    lender = ModelLender(lambda: build_tiny().to(device))
    assert lender.lend().device.type == device
