"""Single-file checkpoints (the A1111 / civitai layout): loaded offline with the project's configs, converted once,
the same numbers as the model they were written from; other architectures refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clic.cli import main
from clic.models import build_tiny, describe_model, load_components


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model written by `clic models save-tiny --single-file` as v1-5-like.safetensors."""
    path = tmp_path_factory.mktemp("checkpoint") / "v1-5-like.safetensors"
    assert main(["models", "save-tiny", "--single-file", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "source.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return {"source": root / "source.png", "mask": root / "mask.png"}


def _outputs(components) -> dict[str, torch.Tensor]:
    """UNet noise prediction, VAE decode and text-encoder states on fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    ids = components.tokenizer(
        ["a photo of a chair"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        text = components.text_encoder(ids)[0]
        unet = components.unet(latents, 500, encoder_hidden_states=text).sample
        image = components.vae.decode(latents).sample
    return {"text": text, "unet": unet, "vae": image, "ids": ids}


def test_the_file_is_in_the_original_layout(tiny_file: Path) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    state = load_file(str(tiny_file))
    # Key names of CompVis' LDM checkpoints (as in v1-5-pruned-emaonly): UNet, VAE (attention as 1×1 convs), CLIP.
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight",
        "model.diffusion_model.out.2.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "first_stage_model.encoder.down.0.block.0.norm1.weight",
        "first_stage_model.decoder.up.2.upsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    ):
        assert key in state, key
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert not any(k.startswith(("unet.", "vae.", "down_blocks.")) for k in state)
    assert infer_diffusers_model_type(state) == "v1"


def test_a_single_file_loads_offline_with_the_same_outputs(tiny_file: Path) -> None:
    original, loaded = build_tiny(), load_components(str(tiny_file))
    expected, got = _outputs(original), _outputs(loaded)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert loaded.model_id == str(tiny_file.resolve()) and loaded.resolution == 64
    assert loaded.scheduler.config.prediction_type == "epsilon"
    described = describe_model(str(tiny_file))  # the driver's view: header only, same identity as the worker's
    assert (described.model_id, described.weights_hash, described.resolution) == (
        loaded.model_id,
        loaded.weights_hash,
        64,
    )


def test_clic_learn_on_a_single_file_learns_what_the_model_it_came_from_learns(
    tiny_file: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    concepts = {}
    for model in ("tiny", str(tiny_file)):
        out = tmp_path / Path(model).stem
        argv = [
            "learn",
            "--model",
            model,
            "--image",
            str(inputs["source"]),
            "--mask",
            str(inputs["mask"]),
            "--object",
            "chair",
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
        assert main(argv) == 0
        concepts[model] = out
    from_tiny, from_file = (load_file(str(next(p.glob("learned_embeds-*.safetensors")))) for p in concepts.values())
    assert from_tiny.keys() == from_file.keys()
    assert all(torch.equal(from_tiny[k], from_file[k]) for k in from_tiny)
    assert json.loads((concepts[str(tiny_file)] / "concept.json").read_text())["model_id"] == str(tiny_file.resolve())


def test_convert_writes_a_diffusers_folder_once(
    tiny_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "converted"
    assert main(["models", "convert", str(tiny_file), str(out), "--arch", "tiny"]) == 0
    assert (out / "model_index.json").exists() and (out / "unet" / "config.json").exists()
    expected, got = _outputs(build_tiny()), _outputs(load_components(str(out)))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    capsys.readouterr()
    # The wrong architecture named by hand is one line, not a shape mismatch deep in diffusers.
    assert main(["models", "convert", str(tiny_file), str(tmp_path / "x"), "--arch", "sd15"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a sd15 checkpoint (cross-attention width 32" in err[0], err


def _sdxl_shaped(path: Path) -> Path:
    """A few tensors under SDXL base's key names (diffusers' CHECKPOINT_KEY_NAMES): what identifies the file."""
    small = torch.zeros(4)
    save_file(
        {
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": small,
            "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 4),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4),
        },
        str(path),
    )
    return path


@pytest.mark.parametrize("command", ["learn", "convert"])
def test_an_sdxl_checkpoint_is_refused_in_one_line_naming_what_is_supported(
    command: str, inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sdxl = _sdxl_shaped(tmp_path / "sd_xl_base_1.0.safetensors")
    argv = (
        [
            "learn",
            "--model",
            str(sdxl),
            "--image",
            str(inputs["source"]),
            "--mask",
            str(inputs["mask"]),
            "--object",
            "chair",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "c"),
            "--quiet",
        ]
        if command == "learn"
        else ["models", "convert", str(sdxl), str(tmp_path / "out")]
    )
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("clic: error: ") and "unsupported architecture (SDXL base)" in lines[0]
    assert "supported single-file checkpoints: SD 1.x (--arch sd15), SD 2.x 768-v (--arch sd21)" in lines[0]


def test_an_sdxl_folder_and_a_file_that_is_no_checkpoint_are_one_line(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionXLPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
            }
        )
    )
    (tmp_path / "notes.ckpt").write_bytes(b"not a checkpoint")
    for model, expected in (
        (folder, "unsupported architecture (StableDiffusionXLPipeline, with text_encoder_2)"),
        (tmp_path / "notes.ckpt", "cannot read the checkpoint"),
    ):
        argv = [
            "learn",
            "--model",
            str(model),
            "--image",
            str(inputs["source"]),
            "--mask",
            str(inputs["mask"]),
            "--object",
            "chair",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "c"),
            "--quiet",
        ]
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines


def test_a_suite_takes_the_same_model_values(tiny_file: Path, tmp_path: Path) -> None:
    """`model:` names a checkpoint file relative to the suite; the plan describes it from its header; an SDXL
    file is one preflight line naming the key's value."""
    from harness.plan.preflight import PreflightFailed, preflight

    manifest = Path(__file__).resolve().parents[2] / "manifests" / "furniture" / "manifest.parquet"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / tiny_file.name).symlink_to(tiny_file)
    _sdxl_shaped(tmp_path / "models" / "xl.safetensors")
    for model in ("v1-5-like.safetensors", "xl.safetensors"):
        (tmp_path / f"{model}.yaml").write_text(
            json.dumps(
                {
                    "name": "file",
                    "model": f"models/{model}",
                    "manifest": str(manifest),
                    "limit_pairs": 1,
                    "methods": [{"name": "clic"}],
                    "tasks": ["transfer"],
                    "metrics": ["ssim_psnr"],
                }
            )
        )
    checked = preflight(tmp_path / "v1-5-like.safetensors.yaml", tmp_path / "run")
    assert checked.suite.model == str(tmp_path / "models" / "v1-5-like.safetensors")
    assert checked.models["clic"].weights_hash == load_components(str(tiny_file)).weights_hash
    with pytest.raises(PreflightFailed) as refused:
        preflight(tmp_path / "xl.safetensors.yaml", tmp_path / "run-xl")
    assert len(refused.value.problems) == 1 and "unsupported architecture (SDXL base)" in refused.value.problems[0]
