"""Device and dtype as settings: `--device`/`--dtype` from the CLI, half precision end to end, fp32 capture when
the model upcasts, seeded draws independent of the dtype, prompts' articles, sizes in use."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from PIL import Image

from clic.attention import CaptureBuffer, ConceptAttnProcessor
from clic.cli import main
from clic.device import resolve_device, resolve_dtype
from clic.learn import capture_resolution, format_prompt, indefinite_article
from clic.models import build_tiny, load_components

# bf16 keeps 8 mantissa bits (relative step 2^-8 ≈ 0.4 %). The frozen model runs in bf16 under autocast while the
# trained token and K/V stay fp32 and the losses are taken in fp32; over the same 5 steps (same t, ε, augmentations)
# the per-term losses differed from fp32 by at most 0.07 % relative on the tiny model (fp16: 0.01 %). Stated
# tolerance: 1 % relative, or 1e-3 absolute for terms near 0.
BF16_REL, BF16_ABS = 1e-2, 1e-3


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision-inputs")
    rng = np.random.default_rng(0)
    paths = {"source": root / "source.png", "mask": root / "mask.png", "target": root / "target.png"}
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths["source"])
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths["target"])
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 12:40] = 255
    Image.fromarray(mask).save(paths["mask"])
    return paths


def losses(concept: Path) -> list[dict[str, float]]:
    with (concept / "losses.csv").open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def learn(images: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        [
            "learn",
            "--model",
            "tiny",
            "--image",
            str(images["source"]),
            "--mask",
            str(images["mask"]),
            "--object",
            "chair",
            "--steps",
            "5",
            "--seed",
            "0",
            "--quiet",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_bf16_on_the_cpu_end_to_end_with_losses_close_to_fp32(images, tmp_path):
    assert learn(images, tmp_path / "fp32", "--device", "cpu", "--dtype", "fp32") == 0
    assert learn(images, tmp_path / "bf16", "--device", "cpu", "--dtype", "bf16") == 0
    full, half = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(full) == len(half) == 5
    for row_full, row_half in zip(full, half):
        assert row_half["t"] == row_full["t"]  # the same draws: the seed does not depend on the dtype
        for term in ("con", "att", "roi", "total"):
            assert row_half[term] == pytest.approx(row_full[term], rel=BF16_REL, abs=BF16_ABS), term
    # master weights: the saved vector is fp32 and differs from the fp32 run's only by bf16 rounding
    from safetensors.torch import load_file

    vec_half = next(iter(load_file(str(tmp_path / "bf16" / "learned_embeds-v.safetensors")).values()))
    vec_full = next(iter(load_file(str(tmp_path / "fp32" / "learned_embeds-v.safetensors")).values()))
    assert vec_half.dtype == torch.float32
    torch.testing.assert_close(vec_half, vec_full, rtol=0.02, atol=0.02)
    common = [
        "--concept",
        str(tmp_path / "bf16"),
        "--object",
        "chair",
        "--steps",
        "4",
        "--dtype",
        "bf16",
        "--device",
        "cpu",
    ]
    assert (
        main(
            [
                "transfer",
                *common,
                "--image",
                str(images["target"]),
                "--mask",
                str(images["mask"]),
                "--t-start",
                "2",
                "--out",
                str(tmp_path / "edit"),
            ]
        )
        == 0
    )
    assert main(["generate", *common, "--stage-one-steps", "1", "--out", str(tmp_path / "gen")]) == 0
    for picture in (tmp_path / "edit" / "edited.png", tmp_path / "gen" / "image-0.png"):
        pixels = np.asarray(Image.open(picture))
        assert pixels.std() > 0  # a real image, not a NaN-black one


def test_device_and_dtype_options_are_checked(images, tmp_path, capsys):
    assert learn(images, tmp_path / "x", "--device", "tpu") == 2
    assert "--device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert learn(images, tmp_path / "x", "--device", "cuda:0") == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert learn(images, tmp_path / "x", "--dtype", "fp8") == 2
    assert "--dtype" in capsys.readouterr().err
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bf16") is torch.bfloat16


def test_load_components_places_and_casts_once():
    components = load_components("tiny", device="cpu", dtype="bf16")
    assert components.dtype == torch.bfloat16 and components.text_encoder.dtype == torch.bfloat16
    assert components.device.type == "cpu"
    half = load_components("tiny", dtype="fp16")
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32  # force_upcast VAE stays fp32


def test_concept_records_an_absolute_model_folder(images, tmp_path, monkeypatch):
    from clic.models import save_tiny

    save_tiny(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert learn(images, tmp_path / "concept", "--model", "model") == 0
    meta = json.loads((tmp_path / "concept" / "concept.json").read_text())
    assert Path(meta["model_id"]) == (tmp_path / "model").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the concept's model reference still resolves
    assert (
        main(
            [
                "generate",
                "--concept",
                str(tmp_path / "concept"),
                "--object",
                "chair",
                "--steps",
                "2",
                "--stage-one-steps",
                "1",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )


def test_generate_honours_resolution(images, tmp_path):
    assert learn(images, tmp_path / "concept") == 0
    assert (
        main(
            [
                "generate",
                "--concept",
                str(tmp_path / "concept"),
                "--object",
                "chair",
                "--steps",
                "2",
                "--stage-one-steps",
                "1",
                "--resolution",
                "96",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "gen" / "image-0.png").size == (96, 96)


def test_attention_resolution_follows_the_latents_in_use():
    """The coarsest up-block map of the tiny UNet (2 levels) is latent/2: 8 at 64 px, 16 at 128 px."""
    from clic.attention import AttentionCapture

    components = build_tiny()
    capture = AttentionCapture(components.unet, "up")
    assert capture_resolution(capture, components) == 8  # native 64 px → 16² latents
    assert capture_resolution(capture, components, 32) == 16  # 128 px in use
    generator = torch.Generator().manual_seed(0)
    capture.set_tokens([[1]])
    components.unet(
        torch.randn(1, 4, 32, 32, generator=generator),
        10,
        encoder_hidden_states=torch.randn(1, 77, 32, generator=generator),
    )
    sides = {math.isqrt(m.shape[1]) for m in capture.maps().values()}
    assert min(sides) == capture_resolution(capture, components, 32)


def _attention_layer(upcast: bool) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8, upcast_attention=upcast)


def test_captured_attention_is_fp32_when_the_model_upcasts():
    """fp16 QKᵀ of large activations overflows (max fp16 ≈ 65504); with upcast_attention the captured map is the
    fp32 softmax of the same projections: softmax(q kᵀ / √d) averaged over heads, written out here."""
    attn = _attention_layer(upcast=True).to(torch.float16)
    buffer = CaptureBuffer()
    buffer.token_positions = torch.tensor([[0, 3]])
    processor = ConceptAttnProcessor.from_attention(
        attn, train_kv=False, train_q_out=False, buffer=buffer, layer_name="x"
    )
    hidden = torch.randn(1, 4, 16) * 1000
    context = torch.randn(1, 5, 8) * 1000
    processor(attn, hidden.half(), context.half())
    captured = buffer.maps["x"]
    assert captured.dtype == torch.float32 and torch.isfinite(captured).all()
    q = attn.to_q(hidden.half()).float().view(1, 4, 2, 8).transpose(1, 2)
    k = attn.to_k(context.half()).float().view(1, 5, 2, 8).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1).mean(dim=1)[:, :, [0, 3]]
    torch.testing.assert_close(captured, expected, rtol=1e-3, atol=1e-4)
    # without the upcast the same fp16 scores overflow: that is what the flag is for
    scores16 = q.half() @ k.half().transpose(-1, -2)
    assert not torch.isfinite(scores16).all()


@pytest.mark.parametrize(
    "word, article",
    [
        ("chair", "a"),
        ("apple", "an"),
        ("hour", "an"),
        ("unicorn", "a"),
        ("table", "a"),
        ("umbrella", "an"),
        ("European vase", "a"),
    ],
)
def test_articles_follow_the_object_word(word, article):
    assert indefinite_article(word) == article
    assert format_prompt("a photo of an {object}", word, ["<v*>"]) == f"a photo of {article} {word}"
    assert format_prompt("A {object} with {tokens} style", word, ["<v*>"]).startswith(f"{article.capitalize()} {word}")
