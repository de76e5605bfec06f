"""A concept folder loads into a stock ``StableDiffusionPipeline`` with the calls the README names, peft installed.

Tested with the versions of constraints.txt (diffusers 0.42.1, peft 0.21.2, transformers 5.23.0). Two diffusers
facts shape the calls (diffusers issue 7261 reports the symptom): ``unet.load_attn_procs`` sets the processors only
when given ``_pipeline`` (its ``set_attn_processor`` call sits inside ``if _pipeline is not None``), and
``set_attn_processor`` needs a processor for every attention layer, so the weights file names the untrained ones
too (an empty tensor each, which ``load_attn_procs`` reads as its ``.bin`` format's ``{}``).
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from helpers import random_source
from safetensors.torch import load_file

from clic.concept import ATTN_WEIGHTS_NAME, LearnedConcept
from clic.generate import GenerateSettings, generate_with_concept
from clic.methods.base import get_method
from clic.models import build_tiny, load_components, save_tiny

ROOT = Path(__file__).resolve().parents[2]


def _pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise KeyError(name)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny diffusers folder and a CLiC concept learned on it (K/V trained on every cross-attention layer)."""
    root = tmp_path_factory.mktemp("stock")
    save_tiny(root / "tiny")
    get_method("clic").learn(
        build_tiny(),
        random_source(1),
        overrides={"steps": 3, "lr": 1e-2},
        seed=0,
        out_dir=root / "concept",
        progress=False,
    )
    return root / "tiny", root / "concept"


def _stock_pipeline(model: Path):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_pinned_versions_with_peft_installed_are_what_runs() -> None:
    import peft  # noqa: F401  (the case of diffusers issue 7261)
    from diffusers.utils import USE_PEFT_BACKEND

    assert USE_PEFT_BACKEND
    for name in ("diffusers", "peft", "transformers"):
        assert version(name) == _pinned(name), f"{name} {version(name)} is not constraints.txt's {_pinned(name)}"


def test_the_readme_calls_load_every_trained_weight_and_reproduce_our_outputs(folders: tuple[Path, Path]) -> None:
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

    model, concept_dir = folders
    meta = json.loads((concept_dir / "concept.json").read_text())
    pipe = _stock_pipeline(model)
    # The README's calls, word for word:
    for token, file in meta["token_files"].items():
        pipe.load_textual_inversion(str(concept_dir / file), token=token)
    pipe.unet.load_attn_procs(
        str(concept_dir), weight_name="pytorch_custom_diffusion_weights.safetensors", _pipeline=pipe
    )

    saved = load_file(str(concept_dir / ATTN_WEIGHTS_NAME))
    trained = {k for k, v in saved.items() if v.numel()}
    assert trained and all(isinstance(p, CustomDiffusionAttnProcessor) for p in pipe.unet.attn_processors.values())
    for name, processor in pipe.unet.attn_processors.items():
        state = processor.state_dict()
        expected = {k.removeprefix(f"{name}."): saved[k] for k in trained if k.startswith(f"{name}.")}
        assert state.keys() == expected.keys(), name
        assert all(torch.equal(state[k], expected[k]) for k in expected), name
    assert pipe.tokenizer.convert_tokens_to_ids(meta["tokens"][0]) != pipe.tokenizer.unk_token_id

    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    stock = pipe(
        f"a photo of a table, with {meta['tokens'][0]} style",
        latents=latents.clone(),
        num_inference_steps=8,
        guidance_scale=7.5,
        output_type="pt",
    ).images
    ours = generate_with_concept(
        load_components(str(model)),
        LearnedConcept.load(concept_dir),
        "table",
        GenerateSettings(steps=8, stage_one_steps=0),
        latents=latents.clone(),
    )
    torch.testing.assert_close(ours.images, stock.cpu(), rtol=0, atol=1e-4)
    base = _stock_pipeline(model)(
        f"a photo of a table, with {meta['tokens'][0]} style",
        latents=latents.clone(),
        num_inference_steps=8,
        guidance_scale=7.5,
        output_type="pt",
    ).images
    assert (base - stock).abs().max() > 1e-3  # the concept changed what the stock pipeline makes


def test_without_the_pipeline_argument_diffusers_sets_nothing(folders: tuple[Path, Path]) -> None:
    """Why the README's call passes ``_pipeline``: the documented form is a silent no-op in diffusers 0.42. If this
    starts failing, diffusers fixed it and the README can drop the argument."""
    if version("diffusers") != _pinned("diffusers"):
        pytest.skip(f"documents diffusers {_pinned('diffusers')}'s behaviour, this is {version('diffusers')}")
    from diffusers.models.attention_processor import AttnProcessor2_0

    model, concept_dir = folders
    pipe = _stock_pipeline(model)
    pipe.unet.load_attn_procs(str(concept_dir), weight_name="pytorch_custom_diffusion_weights.safetensors")
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())


def test_our_loader_still_reads_the_folder_and_older_folders(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """The untrained layers' empty tensors are not weights to us; a folder written before them still loads stock."""
    from clic.cli_checks import concept_problem
    from clic.concept import load_into_pipeline

    model, concept_dir = folders
    concept = LearnedConcept.load(concept_dir)
    assert concept.attention_state and all(v.numel() for v in concept.attention_state.values())
    assert set(concept.attention_layers) == set(build_tiny().unet.attn_processors)
    assert concept_problem(concept_dir) is None
    old = tmp_path / "old"
    concept.attention_layers = []
    concept.save(old)  # as before: trained weights only
    assert all(v.numel() for v in load_file(str(old / ATTN_WEIGHTS_NAME)).values())
    pipe = _stock_pipeline(model)
    load_into_pipeline(pipe, old)
    assert sum(bool(p.state_dict()) for p in pipe.unet.attn_processors.values()) == len(
        {k.rsplit(".processor.", 1)[0] for k in concept.attention_state}
    )
