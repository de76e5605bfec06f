"""The real Stable Diffusion 1.5 and 2.1 (768-v) architectures, random weights, end to end through the CLI.

`clic models save-random --arch sd15|sd21` writes each (~4 GB / ~5 GB); learn → transfer → generate → match run at
128 px with 1-2 steps. Checked: the 16 cross-attention layers, the attention resolution recorded for the latents in
use (128 px → 16² latents → the coarsest up-block map is 4², not the native 16 or 24), the tokenizer's padding,
and that stock diffusers loads the concept folder and runs. Each test prints its seconds and peak memory (peak RSS
of the process since the test started) for the closing note: `pytest -m slow -s tests/clic/test_architectures.py`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clic.cli import main
from clic.device import peak_memory_bytes, reset_peak_memory

pytestmark = pytest.mark.slow
SIDE = 128


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch-inputs")
    rng = np.random.default_rng(0)
    paths = {"image": root / "source.png", "mask": root / "mask.png", "target": root / "target.png"}
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(paths["image"])
    Image.fromarray(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)).save(paths["target"])
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[32:96, 24:88] = 255
    Image.fromarray(mask).save(paths["mask"])
    return paths


@pytest.mark.parametrize("arch, pad_token, text_layers", [("sd15", "<|endoftext|>", 12), ("sd21", "!", 23)])
def test_real_architecture_end_to_end(arch, pad_token, text_layers, inputs, tmp_path):
    from diffusers import StableDiffusionPipeline

    from clic.concept import load_into_pipeline
    from clic.models import load_components

    started = time.perf_counter()
    reset_peak_memory()
    model = tmp_path / arch
    assert main(["models", "save-random", "--arch", arch, str(model)]) == 0
    saved = time.perf_counter()
    concept, edit, gen, matched = (tmp_path / name for name in ("concept", "edit", "gen", "match"))
    common = ["--object", "chair", "--resolution", str(SIDE), "--device", "cpu"]
    assert (
        main(
            [
                "learn",
                "--model",
                str(model),
                "--image",
                str(inputs["image"]),
                "--mask",
                str(inputs["mask"]),
                "--steps",
                "2",
                "--quiet",
                "--out",
                str(concept),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "transfer",
                "--concept",
                str(concept),
                "--image",
                str(inputs["target"]),
                "--mask",
                str(inputs["mask"]),
                "--steps",
                "3",
                "--t-start",
                "1",
                "--out",
                str(edit),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "--concept",
                str(concept),
                "--steps",
                "2",
                "--stage-one-steps",
                "1",
                "--out",
                str(gen),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "match",
                "--concept",
                str(concept),
                "--image",
                str(inputs["target"]),
                "--steps",
                "1",
                "--read-steps",
                "1",
                "--out",
                str(matched),
                *common,
            ]
        )
        == 0
    )
    chain = time.perf_counter()

    meta = json.loads((concept / "concept.json").read_text())
    assert Path(meta["model_id"]) == model.resolve()
    # 128 px → 16² latents; SD's cross-attention up blocks run at 4², 8², 16²: l_att compares at 4²
    assert meta["extras"]["attention_resolution"] == 4
    assert Image.open(gen / "image-0.png").size == (SIDE, SIDE)
    assert Image.open(edit / "edited.png").size == (SIDE, SIDE)

    components = load_components(str(model))
    cross = [name for name in components.unet.attn_processors if name.endswith("attn2.processor")]
    assert len(cross) == 16
    assert components.text_encoder.config.num_hidden_layers == text_layers
    assert components.tokenizer.pad_token == pad_token
    assert components.unet.config.upcast_attention == (arch == "sd21")
    assert components.unet.config.use_linear_projection == (arch == "sd21")
    assert components.scheduler.config.prediction_type == ("v_prediction" if arch == "sd21" else "epsilon")
    stored = set(json.loads(json.dumps(list(components.unet.attn_processors))))
    del components

    pipeline = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    load_into_pipeline(pipeline, concept)
    assert set(pipeline.unet.attn_processors) == stored
    image = pipeline(
        "a photo of a chair, with <v*> style",
        num_inference_steps=1,
        height=SIDE,
        width=SIDE,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 3, SIDE, SIDE) and torch.isfinite(image).all()
    attention_file = concept / meta["attention_weights"]
    print(
        f"\n{arch}: save-random {saved - started:.0f} s; learn+transfer+generate+match at {SIDE} px "
        f"{chain - saved:.0f} s; total with stock loading {time.perf_counter() - started:.0f} s; peak RSS "
        f"{peak_memory_bytes() / 2**30:.2f} GiB; attention weights {attention_file.stat().st_size / 2**20:.1f} MiB; "
        f"attention resolution {meta['extras']['attention_resolution']}"
    )
