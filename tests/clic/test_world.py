"""The tiny world (issue 29): its data stream, its training loop (seeded, resumable) and its shipped weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clic.synth.patterns import PATTERNS
from clic.synth.render import rasterize
from clic.world.autoencoder import autoencoder_loss, build_autoencoder, psnr
from clic.world.data import OBJECT_NAMES, WORLD_SIZE, color_name, render_batch, sample_scene, tint_name
from clic.world.stage import TrainSettings
from clic.world.train import train_stage

CAPTION = re.compile(
    r"^a (?:plain (?P<plain>\w+)|(?P<object>\w+) with a (?P<color>\w+) (?P<pattern>\w+) (?P<part>\w+))"
    r" on a (?P<background>\w+) background$"
)


# ------------------------------------------------------------------------------------------------ data
def test_stream_is_deterministic_per_seed_and_split() -> None:
    first, captions = render_batch(3, 4, "train")
    again, captions_again = render_batch(3, 4, "train")
    assert np.array_equal(first, again) and captions == captions_again
    # scene 4 of the train stream is the same whatever batch it is read in
    single, _ = render_batch(4, 1, "train")
    assert np.array_equal(single[0], first[1])
    heldout, _ = render_batch(3, 4, "heldout")
    other_seed, _ = render_batch(3, 4, "train", seed=1)
    assert not np.array_equal(first, heldout) and not np.array_equal(first, other_seed)
    assert first.shape == (4, 3, WORLD_SIZE, WORLD_SIZE) and first.dtype == np.float32
    assert -1.0 <= first.min() and first.max() <= 1.0


def test_splits_share_no_scene() -> None:
    """The held-out stream is a different seed stream: no (object, placement, colours) scene appears in both."""

    def key(split: str, index: int) -> tuple:
        scene = sample_scene(index, split)
        return (scene.object_name, scene.instance.placement, scene.instance.background, scene.pattern)

    train = {key("train", i) for i in range(200)}
    assert not train & {key("heldout", i) for i in range(200)}


def test_captions_match_the_render_parameters() -> None:
    seen_objects, seen_patterns = set(), set()
    for index in range(60):
        scene = sample_scene(index, "heldout")
        match = CAPTION.match(scene.caption)
        assert match, scene.caption
        assert match["background"] == tint_name(scene.instance.background)
        if scene.pattern is None:
            assert match["plain"] == scene.object_name
            continue
        assert match["object"] == scene.object_name
        assert match["pattern"] == scene.pattern.name and match["part"] == scene.part
        assert match["color"] == color_name(scene.pattern.colors[0])
        # the named part really carries the pattern: its pixels differ from the plain render there
        raster = rasterize(scene.instance, WORLD_SIZE)
        mask = raster.part_masks()[scene.part]
        assert mask.any()
        assert np.abs(scene.render() - raster.paint())[mask].max() > 0.05
        seen_objects.add(scene.object_name)
        seen_patterns.add(scene.pattern.name)
    assert len(seen_objects) >= 8 and len(seen_patterns) >= 6
    assert seen_objects <= set(OBJECT_NAMES) and seen_patterns <= set(PATTERNS)


def test_colour_names_follow_hue_saturation_value() -> None:
    assert color_name((230, 20, 20)) == "red"
    assert color_name((20, 40, 220)) == "blue"
    assert color_name((30, 200, 40)) == "green"
    assert color_name((120, 70, 20)) == "brown"
    assert color_name((10, 10, 12)) == "black"
    assert color_name((240, 240, 238)) == "white"
    assert tint_name((240, 225, 245)) == "lilac"
    assert tint_name((225, 245, 230)) == "mint"


# -------------------------------------------------------------------------------------------- training
def test_psnr_is_ten_log10_of_one_over_mse() -> None:
    reference = torch.zeros(1, 3, 4, 4) - 1.0  # black in [-1, 1]
    estimate = reference + 2 * 0.1  # 0.1 brighter on the [0, 1] scale everywhere: MSE 0.01 -> 20 dB
    assert float(psnr(reference, estimate)[0]) == pytest.approx(20.0, abs=1e-4)


def test_a_few_autoencoder_steps_lower_the_loss(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    settings = TrainSettings(stage="autoencoder", steps=8, batch=2, lr=1e-3)
    images = torch.from_numpy(render_batch(0, 4, "train")[0])

    def loss_of(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(autoencoder_loss(model, images, torch.Generator().manual_seed(0), settings.kl_weight))

    before = loss_of(build_autoencoder(settings.seed))
    model, result = train_stage(settings, tmp_path, progress=False)
    assert result.steps == 8
    assert loss_of(model) < 0.7 * before


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    whole, _ = train_stage(TrainSettings(stage="autoencoder", steps=4, batch=2), tmp_path / "whole", progress=False)
    train_stage(TrainSettings(stage="autoencoder", steps=2, batch=2), tmp_path / "split", progress=False)
    resumed, result = train_stage(
        TrainSettings(stage="autoencoder", steps=4, batch=2), tmp_path / "split", progress=False
    )
    assert result.steps == 4
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_other_settings_is_refused(tmp_path: Path) -> None:
    train_stage(TrainSettings(stage="autoencoder", steps=1, batch=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train_stage(TrainSettings(stage="autoencoder", steps=2, batch=3), tmp_path, progress=False)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Norm groups change no parameter shape: without the architecture check the old weights would load silently."""
    from clic.tiny_models import TINY_VAE_CONFIG

    settings = TrainSettings(stage="autoencoder", steps=1, batch=2)
    with monkeypatch.context() as patch:
        patch.setattr("clic.world.autoencoder.world_vae_config", lambda: dict(TINY_VAE_CONFIG))
        train_stage(settings, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another architecture"):
        train_stage(TrainSettings(stage="autoencoder", steps=2, batch=2), tmp_path, progress=False)


def test_a_few_scorer_steps_lower_the_contrastive_loss(tmp_path: Path) -> None:
    from clic.world.scorer import build_scorer, contrastive_loss

    torch.set_num_threads(1)
    settings = TrainSettings(stage="scorer", steps=8, batch=8, lr=1e-3)
    images, captions = render_batch(0, 8, "train")

    def loss_of(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(contrastive_loss(model, torch.from_numpy(images), captions))

    before = loss_of(build_scorer(settings.seed))
    model, _ = train_stage(settings, tmp_path, progress=False)
    assert loss_of(model) < before


def test_cli_trains_and_writes_weights_with_their_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clic.cli import main

    monkeypatch.setattr("clic.world.autoencoder.EVAL_SCENES", 8)

    out = tmp_path / "weights"
    code = main(
        [
            "models",
            "train-world",
            "--stage",
            "autoencoder",
            "--steps",
            "2",
            "--batch",
            "2",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    record = json.loads((out / "train-autoencoder.json").read_text())
    weights = out / record["weights"]
    assert weights.is_file() and record["bytes"] == weights.stat().st_size and len(record["sha256"]) == 64
    assert record["steps"] == 2 and "train-world" in record["command"] and "heldout_psnr_db" in record["gate"]
    assert record["gate"]["heldout_scenes"] == 8
    config = json.loads((out / "autoencoder" / "config.json").read_text())
    assert config["scaling_factor"] != 0.18215  # measured on the trained latents, not SD's constant


def test_cli_rejects_a_bad_option_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from clic.cli import main

    assert (
        main(["models", "train-world", "--stage", "autoencoder", "--steps", "0", "--checkpoint-dir", str(tmp_path)])
        == 2
    )
    assert capsys.readouterr().err.strip() == "clic: error: --steps: must be positive, got 0"


def test_unet_stage_without_a_trained_autoencoder_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clic import tiny_world
    from clic.cli import main

    monkeypatch.setattr(tiny_world, "TINY_WORLD_WEIGHTS", tmp_path / "weights")
    assert main(["models", "train-world", "--stage", "unet", "--steps", "1", "--checkpoint-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("clic: error: --stage: the unet stage needs the trained autoencoder") and "\n" not in error


def test_tiny_world_without_its_weights_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clic import models, tiny_world

    monkeypatch.setattr(tiny_world, "TINY_WORLD_WEIGHTS", tmp_path)
    with pytest.raises(models.ModelNotFoundError, match="train-world"):
        models.load_components(models.TINY_WORLD)


# ----------------------------------------------------------------------------------------- shipped weights
SHIPPED = Path(__file__).resolve().parents[2] / "clic" / "world" / "weights"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "train-autoencoder.json").is_file(), reason="autoencoder weights not shipped")
def test_shipped_autoencoder_matches_its_record_and_passes_the_gate() -> None:
    """The shipped file is the recorded one, and re-measuring the held-out gate gives the recorded figure."""
    from diffusers import AutoencoderKL

    from clic.world.autoencoder import evaluate_autoencoder
    from clic.world.stage import AUTOENCODER_GATE_PSNR
    from clic.world.train import sha256_file

    torch.set_num_threads(1)
    record = json.loads((SHIPPED / "train-autoencoder.json").read_text())
    assert sha256_file(SHIPPED / record["weights"]) == record["sha256"]
    vae = AutoencoderKL.from_pretrained(SHIPPED / "autoencoder").eval()
    gate = evaluate_autoencoder(vae, count=record["gate"]["heldout_scenes"])
    assert gate["heldout_psnr_db"] == pytest.approx(record["gate"]["heldout_psnr_db"], abs=0.01)
    assert gate["heldout_psnr_db"] >= AUTOENCODER_GATE_PSNR
    # the posterior's noise is negligible: a sample (what `clic transfer` encodes with) reconstructs as the mean does
    images = torch.from_numpy(render_batch(0, 8, "heldout")[0])
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        sampled = psnr(images, vae.decode(posterior.sample(generator=torch.Generator().manual_seed(0))).sample)
        mean = psnr(images, vae.decode(posterior.mode()).sample)
    assert float((mean - sampled).abs().max()) < 0.5


@pytest.mark.skipif(not (SHIPPED / "train-scorer.json").is_file(), reason="scorer weights not shipped")
def test_shipped_scorer_matches_its_record_and_passes_the_gate() -> None:
    """The shipped world CLIP is the recorded file; its held-out text->image top-1 among 100 captions is the
    recorded figure and reaches stage 3's gate (issue 29: >= 80 %)."""
    from clic.world.scorer import RETRIEVAL_CANDIDATES, load_scorer, to_clip_input, tokenize
    from clic.world.train import sha256_file

    torch.set_num_threads(1)
    record = json.loads((SHIPPED / "train-scorer.json").read_text())
    assert sha256_file(SHIPPED / record["weights"]) == record["sha256"]
    scorer = load_scorer(SHIPPED / "scorer")
    # the retrieval written out: caption i must rank image i first among the first 100 held-out scenes
    images, captions = render_batch(0, RETRIEVAL_CANDIDATES, "heldout", record["settings"]["seed"])
    with torch.no_grad():
        image_features = scorer.encode_image(to_clip_input(torch.from_numpy(images), scorer))
        text_features = scorer.encode_text(tokenize(captions))
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    top1 = float(((text_features @ image_features.T).argmax(dim=1) == torch.arange(len(captions))).float().mean())
    assert top1 == pytest.approx(record["gate"]["heldout_text_to_image_top1"], abs=0.01)
    assert top1 >= 0.80 and record["gate"]["passed"]
