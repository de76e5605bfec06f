"""The tiny world's stage-4 gate (issue 29): the render classifier, the generation gate read by it (and by the
world scorer), and the world scorer as the CLIP metrics' model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clic.world.classifier import (
    PATTERN_CLASSES,
    PLAIN,
    WorldClassifier,
    _save,
    build_classifier,
    labelled_batch,
    load_classifier,
)
from clic.world.data import OBJECT_NAMES, render_batch, sample_scene
from clic.world.stage import TrainSettings
from clic.world.train import train_stage

SHIPPED = Path(__file__).resolve().parents[2] / "clic" / "world" / "weights"


# ------------------------------------------------------------------------------------------- classifier
def test_labels_are_the_scenes_own_object_and_pattern() -> None:
    images, objects, patterns, captions = labelled_batch(5, 12, "heldout")
    rendered, rendered_captions = render_batch(5, 12, "heldout")
    assert np.array_equal(images, rendered) and captions == rendered_captions
    for offset in range(12):
        scene = sample_scene(5 + offset, "heldout")
        assert OBJECT_NAMES[objects[offset]] == scene.object_name
        assert PATTERN_CLASSES[patterns[offset]] == (scene.pattern.name if scene.pattern else PLAIN)
        assert f" {scene.object_name} " in f" {captions[offset]} "


def test_classifier_heads_have_one_logit_per_class() -> None:
    model = build_classifier(0).eval()
    objects, patterns = model(torch.zeros(2, 3, 64, 64))
    assert objects.shape == (2, len(OBJECT_NAMES)) and patterns.shape == (2, len(PATTERN_CLASSES))
    assert PATTERN_CLASSES[-1] == PLAIN and len(PATTERN_CLASSES) == 8


def test_a_few_classifier_steps_lower_the_loss(tmp_path: Path) -> None:
    from clic.world.classifier import classifier_loss

    torch.set_num_threads(1)
    images, objects, patterns, _ = labelled_batch(0, 8, "train")
    batch = (torch.from_numpy(images), torch.from_numpy(objects), torch.from_numpy(patterns))

    def loss_of(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return float(classifier_loss(model, *batch))

    before = loss_of(build_classifier(0))
    model, result = train_stage(TrainSettings(stage="classifier", steps=12, batch=8, lr=2e-3), tmp_path, progress=False)
    assert result.steps == 12
    assert loss_of(model) < before


def test_saved_classifier_loads_with_its_classes(tmp_path: Path) -> None:
    model = build_classifier(3).eval()
    _save(model, tmp_path)
    loaded = load_classifier(tmp_path)
    images = torch.from_numpy(labelled_batch(0, 3, "heldout")[0])
    for a, b in zip(model(images), loaded(images)):
        assert torch.equal(a, b)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "patterns": config["patterns"][:-1]}))
    with pytest.raises(ValueError, match="not this world's"):
        load_classifier(tmp_path)


def test_missing_classifier_names_the_command(tmp_path: Path) -> None:
    from clic.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="train-world --stage classifier"):
        load_classifier(tmp_path)


# ------------------------------------------------------------------------------------------- the gate
class _NegatingVae:
    """An autoencoder stand-in whose reconstruction is the negated image, so a test can tell which images the
    ceiling's instruments read."""

    device, dtype = torch.device("cpu"), torch.float32

    def encode(self, images: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: images))

    def decode(self, latents: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=-latents)


_COMPONENTS = SimpleNamespace(vae=_NegatingVae())


class _Fixed(WorldClassifier):
    """Always reads one object and one pattern, whatever the image."""

    def __init__(self, object_name: str, pattern_name: str) -> None:
        super().__init__()
        self.answer = (OBJECT_NAMES.index(object_name), PATTERN_CLASSES.index(pattern_name))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        objects = torch.zeros(len(images), len(OBJECT_NAMES))
        patterns = torch.zeros(len(images), len(PATTERN_CLASSES))
        objects[:, self.answer[0]], patterns[:, self.answer[1]] = 1.0, 1.0
        return objects, patterns


def test_gate_shares_are_object_over_all_and_pattern_over_the_patterned(monkeypatch: pytest.MonkeyPatch) -> None:
    from clic.world import diffusion

    count = 40
    monkeypatch.setattr(diffusion, "text_to_image", lambda components, prompts, **_: torch.rand(len(prompts), 3, 8, 8))
    record = diffusion.generation_gate(_COMPONENTS, _Fixed("chair", "dots"), count=count)
    scenes = [sample_scene(index, "heldout") for index in range(count)]
    patterned = [scene for scene in scenes if scene.pattern is not None]
    assert record["captions"] == count and record["patterned_captions"] == len(patterned)
    assert record["classifier"]["object"] == round(sum(s.object_name == "chair" for s in scenes) / count, 4)
    assert record["classifier"]["pattern"] == round(
        sum(s.pattern.name == "dots" for s in patterned) / len(patterned), 4
    )
    assert record["classifier"]["plain_read_as_plain"] == 0.0
    assert record["passed"] is False  # a constant answer is right for about one class in eleven


def test_gate_passes_when_every_image_shows_its_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator that returns the held-out renders themselves, read by an oracle classifier: 100 %."""
    from clic.world import diffusion

    count = 12
    scenes = [sample_scene(index, "heldout") for index in range(count)]
    monkeypatch.setattr(
        diffusion,
        "text_to_image",
        lambda components, prompts, **_: (torch.from_numpy(render_batch(0, count, "heldout")[0]) + 1) / 2,
    )

    class Oracle(WorldClassifier):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            objects = torch.zeros(len(images), len(OBJECT_NAMES))
            patterns = torch.zeros(len(images), len(PATTERN_CLASSES))
            for row, scene in enumerate(scenes):
                objects[row, OBJECT_NAMES.index(scene.object_name)] = 1
                patterns[row, PATTERN_CLASSES.index(scene.pattern.name if scene.pattern else PLAIN)] = 1
            return objects, patterns

    record = diffusion.generation_gate(_COMPONENTS, Oracle(), count=count)
    assert record["classifier"]["object"] == 1.0 and record["classifier"]["pattern"] == 1.0
    assert record["passed"] is True


def test_ceiling_reads_the_gate_scenes_as_rendered_and_as_reconstructed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceiling's instruments read the gate's own scenes: their renders in [-1, 1], then the autoencoder's
    decoding of its posterior mean of them, with the same shares as the generated images' reading."""
    from clic.world import diffusion

    count = 10
    renders = torch.from_numpy(render_batch(0, count, "heldout")[0])
    monkeypatch.setattr(
        diffusion, "text_to_image", lambda components, prompts, **_: torch.rand(len(prompts), 3, 64, 64)
    )
    read: list[torch.Tensor] = []

    class Recording(_Fixed):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            read.append(images.clone())
            return super().forward(images)

    record = diffusion.generation_gate(_COMPONENTS, Recording("stool", PLAIN), count=count)
    generated, rendered, reconstructed = read
    assert torch.allclose(rendered, renders, atol=1e-6)
    assert torch.allclose(reconstructed, -renders, atol=1e-6)
    assert record["ceiling"]["renders"]["classifier"] == record["classifier"]
    assert record["ceiling"]["reconstructions"]["classifier"] == record["classifier"]


def test_text_to_image_runs_sd_pipeline_with_ddim_and_guidance() -> None:
    """The generation path on the world's architecture (random UNet, shipped VAE): seeded, SD's DDIM schedule."""
    pytest.importorskip("diffusers")
    from clic.world.diffusion import build_text_to_image, components_of, text_to_image

    if not (SHIPPED / "autoencoder" / "config.json").is_file():
        pytest.skip("world autoencoder not shipped")
    torch.set_num_threads(1)
    components = components_of(build_text_to_image(0).eval())
    first = text_to_image(components, ["a plain chair on a mint background"] * 2, steps=2, seed=1)
    again = text_to_image(components, ["a plain chair on a mint background"] * 2, steps=2, seed=1)
    assert first.shape == (2, 3, 64, 64) and 0 <= float(first.min()) and float(first.max()) <= 1
    assert torch.equal(first, again)
    assert components.scheduler.config.prediction_type == "epsilon"


def test_scorer_agreement_reads_swapped_words() -> None:
    """The scorer picks among the caption with its object (pattern) word swapped: a scorer whose text features
    are the same for every caption picks the first variant, i.e. OBJECT_NAMES[0] / PATTERN_NAMES[0]."""
    from clic.world.data import PATTERN_NAMES
    from clic.world.diffusion import scorer_agreement
    from clic.world.scorer import build_scorer

    scenes = [sample_scene(index, "heldout") for index in range(10)]
    scorer = build_scorer(0)
    scorer.encode_text = lambda tokens: torch.ones(len(tokens), 64)  # type: ignore[method-assign]
    images = torch.from_numpy(render_batch(0, 10, "heldout")[0])
    record = scorer_agreement(scorer, images, scenes)
    patterned = [s for s in scenes if s.pattern is not None]
    assert record["object"] == round(sum(s.object_name == OBJECT_NAMES[0] for s in scenes) / 10, 4)
    assert record["pattern"] == round(sum(s.pattern.name == PATTERN_NAMES[0] for s in patterned) / len(patterned), 4)


def test_world_gate_cli_refuses_a_missing_checkpoint_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from clic.cli import main

    assert main(["models", "world-gate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"clic: error: --checkpoint: no such file: {tmp_path / 'none.pt'}"


# ------------------------------------------------------------------------------------ the world CLIP
def _exported_scorer(folder: Path) -> torch.nn.Module:
    from clic.world.scorer import _save as save_scorer
    from clic.world.scorer import build_scorer

    model = build_scorer(5).eval()
    save_scorer(model, folder)
    return model


def test_clip_model_tiny_world_is_the_exported_scorer_labelled_like_the_model(tmp_path: Path) -> None:
    from clic.components import TINY_WORLD_LABEL
    from clic.world.scorer import to_clip_input, tokenize
    from harness.metrics import metric_class
    from harness.metrics.base import MetricSettings, Sample

    scorer = _exported_scorer(tmp_path / "scorer")
    settings = MetricSettings(options={"clip": {"model": "tiny-world", "pretrained": str(tmp_path / "scorer")}})
    metric = metric_class("clip_text")(settings)
    assert metric.weights == TINY_WORLD_LABEL
    images, captions = render_batch(0, 2, "heldout")
    samples = [
        Sample(
            job_id=str(i), task="generate", output_image=((images[i].transpose(1, 2, 0) + 1) / 2), prompt=captions[i]
        )
        for i in range(2)
    ]
    values = [row[0].value for row in metric.compute(samples)]
    with torch.no_grad():  # the scorer's own cosine, from its own preprocessing of the same 64 px images
        image_features = torch.nn.functional.normalize(
            scorer.encode_image(to_clip_input(torch.from_numpy(images), scorer)), dim=-1
        )
        text_features = torch.nn.functional.normalize(scorer.encode_text(tokenize(captions)), dim=-1)
    expected = (image_features * text_features).sum(1)
    assert values == pytest.approx(expected.tolist(), abs=1e-4)


def test_missing_world_clip_is_one_line_or_the_labelled_random_clip(tmp_path: Path) -> None:
    from harness.metrics import models
    from harness.metrics.base import TINY_RANDOM, MetricSettings

    options = {"clip": {"model": "tiny-world", "pretrained": str(tmp_path)}}
    missing = models.missing_clip_weights(MetricSettings(options=options))
    assert len(missing) == 1 and "train-world --stage scorer" in missing[0]
    with pytest.raises(models.WeightsUnavailable, match="train-world --stage scorer"):
        models.load_clip(MetricSettings(options=options))
    assert models.load_clip(MetricSettings(allow_random=True, options=options)).weights == TINY_RANDOM


def test_a_tiny_world_suite_scores_clip_with_the_world_scorer_unless_told(tmp_path: Path) -> None:
    from harness.plan.suite import load_suite

    manifest = Path(__file__).resolve().parents[2] / "manifests" / "furniture" / "manifest.parquet"
    base = {"name": "w", "manifest": str(manifest), "methods": [{"name": "cut_paste"}], "tasks": ["transfer"]}
    cases = {
        "world": ({"model": "tiny-world", "metrics": ["clip_image", "ssim_psnr"]}, {"model": "tiny-world"}),
        "named": (
            {"model": "tiny-world", "metrics": ["clip_image"], "metric_options": {"clip": {"model": "ViT-B-32"}}},
            {"model": "ViT-B-32"},
        ),
        "tiny": ({"model": "tiny", "metrics": ["clip_image"]}, None),
        "no clip metric": ({"model": "tiny-world", "metrics": ["ssim_psnr"]}, None),
    }
    for name, (changes, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps({**base, **changes}))
        options = load_suite(path).metric_options
        assert (dict(options["clip"]) if "clip" in options else None) == expected, name


# ------------------------------------------------------------------------------------- shipped weights
@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "train-classifier.json").is_file(), reason="classifier weights not shipped")
def test_shipped_classifier_matches_its_record() -> None:
    """The shipped file is the recorded one, and its held-out accuracy on renders is the recorded figure."""
    from clic.world.classifier import evaluate_classifier
    from clic.world.train import sha256_file

    record = json.loads((SHIPPED / "train-classifier.json").read_text())
    assert sha256_file(SHIPPED / record["weights"]) == record["sha256"]
    measured = evaluate_classifier(load_classifier(), count=record["gate"]["heldout_scenes"])
    assert measured["renders"] == record["gate"]["renders"]


def test_a_unet_checkpoint_written_as_a_folder_runs_as_a_labelled_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`clic models world-checkpoint-folder` writes the checkpoint's networks as an SD folder that loads like any
    model, carries a label naming the unshipped checkpoint (never the tiny-world one), and generates exactly
    what the checkpoint itself does; a checkpoint of another stage is one line."""
    from clic.cli import main
    from clic.components import TINY_WORLD_LABEL
    from clic.models import load_components
    from clic.world.checkpoint_folder import checkpoint_label
    from clic.world.diffusion import components_of, load_checkpoint_model, text_to_image

    if not (SHIPPED / "autoencoder" / "config.json").is_file():
        pytest.skip("world autoencoder not shipped")
    torch.set_num_threads(1)
    train_stage(TrainSettings(stage="unet", steps=1, batch=2), tmp_path / "unet", progress=False)
    checkpoint = tmp_path / "unet" / "checkpoint.pt"
    assert main(["models", "world-checkpoint-folder", str(checkpoint), str(tmp_path / "folder")]) == 0
    loaded = load_components(str(tmp_path / "folder"))
    assert loaded.weights_label == checkpoint_label(1) != TINY_WORLD_LABEL
    assert loaded.resolution == 64
    model, step = load_checkpoint_model(checkpoint)
    prompt = ["a chair with a red dots seat on a mint background"]
    assert step == 1
    assert torch.equal(
        text_to_image(loaded, prompt, steps=2, seed=3), text_to_image(components_of(model), prompt, steps=2, seed=3)
    )

    train_stage(TrainSettings(stage="classifier", steps=1, batch=2), tmp_path / "classifier", progress=False)
    capsys.readouterr()
    other = tmp_path / "classifier" / "checkpoint.pt"
    assert main(["models", "world-checkpoint-folder", str(other), str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "classifier checkpoint, not one of the unet stage" in error
    assert not (tmp_path / "other").exists()
