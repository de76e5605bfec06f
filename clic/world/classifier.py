"""The tiny world's render classifier: which object a 64 px image shows, and which pattern (or none) it carries.

It is the measuring instrument of the stage-4 gate (issue 29: images generated from held-out captions show the
prompted object >= 70 % and the prompted pattern >= 40 %, :mod:`clic.world.diffusion`), trained like the other
stages (``clic models train-world --stage classifier``): seeded, resumable, on the train stream of
:mod:`clic.world.data`, and evaluated on the held-out stream.

Architecture: a small all-convolutional network (3x3 convs with BatchNorm + ReLU: a full-size stem, then three
stages that halve the side with two convs each), global mean- and max-pooled, and two linear heads:
:data:`OBJECT_NAMES` and :data:`PATTERN_CLASSES` (the seven patterns and ``plain``). Max pooling is there because a pattern may cover a small part of the image (a ring's
band): its evidence must not be averaged away. The loss is the sum of the two cross-entropies.

Generated images pass through the VAE decoder, which blurs the finest patterns: a classifier trained on renders
alone reads patterns in renders and is near chance on the same scenes after the world autoencoder (held-out,
step 500 of a renders-only run: pattern 45 % on renders, 15 % on reconstructions; chance 14 %). So half of each
training batch is the shipped autoencoder's reconstruction of the render (posterior mean, computed once per
scene): the instrument reads what a decoded image can show. Its evaluation reports held-out accuracy on both, and
its bar (:data:`CLASSIFIER_MIN_OBJECT`, :data:`CLASSIFIER_MIN_PATTERN`) is on the reconstructions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import OBJECT_NAMES, PATTERN_NAMES, WORLD_SEED, sample_scene

if TYPE_CHECKING:
    from .stage import Stage, TrainSettings

PLAIN = "plain"
PATTERN_CLASSES: tuple[str, ...] = PATTERN_NAMES + (PLAIN,)
CHANNELS = (24, 48, 96, 128)  # a full-size stem, then three stages that halve the side (64 -> 8 px), two convs each
TRAIN_POOL = 8192  # train scenes rendered once and cycled through (rendering costs more than a step's compute)
EVAL_SCENES = 512
NOISE_STD = 0.03  # Gaussian pixel noise of the training images ([-1, 1] scale): decoded images are never clean
# The instrument must read decoded images (autoencoder reconstructions) well above what the gate asks of generated
# images (object 70 %, pattern 40 % of the patterned prompts).
CLASSIFIER_MIN_OBJECT = 0.90
CLASSIFIER_MIN_PATTERN = 0.60  # over the patterned scenes
RECONSTRUCTED_SHARE = 0.5  # of each training batch: the autoencoder's reconstruction instead of the render
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "classifier.safetensors"


class WorldClassifier(torch.nn.Module):
    """Images in [-1, 1], (N, 3, H, W) -> (object logits (N, 11), pattern logits (N, 8))."""

    def __init__(
        self,
        channels: tuple[int, ...] = CHANNELS,
        objects: int = len(OBJECT_NAMES),
        patterns: int = len(PATTERN_CLASSES),
    ) -> None:
        super().__init__()
        layers, width = _block(3, channels[0], 1), channels[0]
        for out in channels[1:]:  # each stage halves the side, then a second conv at that side
            layers += _block(width, out, 2) + _block(out, out, 1)
            width = out
        self.trunk = torch.nn.Sequential(*layers)
        self.object_head = torch.nn.Linear(2 * width, objects)
        self.pattern_head = torch.nn.Linear(2 * width, patterns)
        self.config = {"channels": list(channels), "objects": list(OBJECT_NAMES), "patterns": list(PATTERN_CLASSES)}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(images)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.object_head(pooled), self.pattern_head(pooled)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        """Object and pattern names of images in [-1, 1]."""
        objects, patterns = self(images)
        return (
            [OBJECT_NAMES[i] for i in objects.argmax(1).tolist()],
            [PATTERN_CLASSES[i] for i in patterns.argmax(1).tolist()],
        )


def _block(width: int, out: int, stride: int) -> list[torch.nn.Module]:
    return [
        torch.nn.Conv2d(width, out, 3, stride=stride, padding=1, bias=False),
        torch.nn.BatchNorm2d(out),
        torch.nn.ReLU(inplace=True),
    ]


def labelled_batch(
    start: int, count: int, split: str = "train", seed: int = WORLD_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Scenes ``start .. start + count - 1``: images (count, 3, 64, 64) in [-1, 1], object and pattern class
    indices, and captions (the same scenes as :func:`clic.world.data.render_batch`)."""
    scenes = [sample_scene(index, split, seed) for index in range(start, start + count)]
    images = np.stack([scene.render() for scene in scenes]).transpose(0, 3, 1, 2) * 2.0 - 1.0
    objects = np.array([OBJECT_NAMES.index(scene.object_name) for scene in scenes])
    patterns = np.array([PATTERN_CLASSES.index(scene.pattern.name if scene.pattern else PLAIN) for scene in scenes])
    return images, objects, patterns, [scene.caption for scene in scenes]


def build_classifier(seed: int) -> WorldClassifier:
    torch.manual_seed(seed)
    return WorldClassifier()


def classifier_loss(
    model: WorldClassifier, images: torch.Tensor, objects: torch.Tensor, patterns: torch.Tensor
) -> torch.Tensor:
    object_logits, pattern_logits = model(images)
    return torch.nn.functional.cross_entropy(object_logits, objects) + torch.nn.functional.cross_entropy(
        pattern_logits, patterns
    )


_POOL: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int, int]] = {}  # (seed, index) -> render, reconstruction
_AUTOENCODER: list = []  # the shipped autoencoder, loaded once per process ([None] when it is not shipped)


def _reconstruct(images: np.ndarray) -> np.ndarray:
    """The shipped world autoencoder's reconstructions (posterior mean) of images in [-1, 1]; the images
    themselves when no autoencoder is shipped."""
    if not _AUTOENCODER:
        _AUTOENCODER.append(_shipped_autoencoder())
    vae = _AUTOENCODER[0]
    if vae is None:
        return images
    with torch.no_grad():
        batch = torch.from_numpy(images)
        return vae.decode(vae.encode(batch).latent_dist.mode()).sample.clamp(-1, 1).numpy()


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round((images + 1) * 127.5).astype(np.uint8)


def _pooled_batch(start: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train scenes ``start .. start + count - 1`` modulo :data:`TRAIN_POOL`: renders, their autoencoder
    reconstructions, objects, patterns. Each scene is rendered and reconstructed once per process (kept as 8-bit,
    as a PNG would be); a function of (seed, index) alone, so a resumed run sees the same data."""
    indices = [(start + offset) % TRAIN_POOL for offset in range(count)]
    missing = sorted({index for index in indices if (seed, index) not in _POOL})
    for begin in range(0, len(missing), 32):
        chunk = missing[begin : begin + 32]
        rendered = [labelled_batch(index, 1, "train", seed) for index in chunk]
        images = np.concatenate([item[0] for item in rendered])
        reconstructed = _reconstruct(images)
        for row, (index, item) in enumerate(zip(chunk, rendered)):
            _POOL[(seed, index)] = (
                _to_uint8(images[row]),
                _to_uint8(reconstructed[row]),
                int(item[1][0]),
                int(item[2][0]),
            )
    items = [_POOL[(seed, index)] for index in indices]

    def floats(position: int) -> np.ndarray:
        return np.stack([item[position] for item in items]).astype(np.float32) / 127.5 - 1.0

    return floats(0), floats(1), np.array([item[2] for item in items]), np.array([item[3] for item in items])


def _step_loss(model: WorldClassifier, step: int, generator: torch.Generator, settings: TrainSettings) -> torch.Tensor:
    renders, reconstructions, objects, patterns = _pooled_batch(step * settings.batch, settings.batch, settings.seed)
    reconstructed = torch.rand(len(renders), generator=generator) < RECONSTRUCTED_SHARE
    images = torch.where(reconstructed.view(-1, 1, 1, 1), torch.from_numpy(reconstructions), torch.from_numpy(renders))
    flipped = torch.rand(len(images), generator=generator) < 0.5  # left-right: every object and pattern allows it
    images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
    images = images + NOISE_STD * torch.randn(images.shape, generator=generator)
    return classifier_loss(model, images, torch.from_numpy(objects), torch.from_numpy(patterns))


def accuracy(
    model: WorldClassifier, images: torch.Tensor, objects: np.ndarray, patterns: np.ndarray
) -> dict[str, float]:
    """Object accuracy over all images; pattern accuracy over all, and over the patterned scenes alone."""
    with torch.no_grad():
        object_logits, pattern_logits = [
            torch.cat(parts) for parts in zip(*(model(chunk) for chunk in images.split(64)))
        ]
    object_hit = object_logits.argmax(1).numpy() == objects
    pattern_hit = pattern_logits.argmax(1).numpy() == patterns
    patterned = patterns != PATTERN_CLASSES.index(PLAIN)
    return {
        "object": round(float(object_hit.mean()), 4),
        "pattern": round(float(pattern_hit.mean()), 4),
        "pattern_of_patterned": round(float(pattern_hit[patterned].mean()), 4),
    }


@torch.no_grad()
def evaluate_classifier(
    model: WorldClassifier, seed: int = WORLD_SEED, count: int | None = None, autoencoder: torch.nn.Module | None = None
) -> dict:
    """Held-out accuracy on renders, and (when the world autoencoder is given or shipped) on its reconstructions."""
    count = count or EVAL_SCENES
    was_training = model.training
    model.eval()
    images, objects, patterns, _ = labelled_batch(0, count, "heldout", seed)
    images = torch.from_numpy(images)
    record = {"heldout_scenes": count, "renders": accuracy(model, images, objects, patterns)}
    vae = autoencoder if autoencoder is not None else _shipped_autoencoder()
    if vae is not None:
        decoded = torch.cat(
            [vae.decode(vae.encode(chunk).latent_dist.mode()).sample.clamp(-1, 1) for chunk in images.split(32)]
        )
        record["autoencoder_reconstructions"] = accuracy(model, decoded, objects, patterns)
    model.train(was_training)
    read = record.get("autoencoder_reconstructions", record["renders"])
    record.update(
        gate_object=CLASSIFIER_MIN_OBJECT,
        gate_pattern_of_patterned=CLASSIFIER_MIN_PATTERN,
        passed=read["object"] >= CLASSIFIER_MIN_OBJECT and read["pattern_of_patterned"] >= CLASSIFIER_MIN_PATTERN,
    )
    return record


def _shipped_autoencoder() -> torch.nn.Module | None:
    from ..tiny_world import TINY_WORLD_WEIGHTS

    folder = TINY_WORLD_WEIGHTS / "autoencoder"
    if not (folder / "config.json").is_file():
        return None
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder).eval()


def _save(model: WorldClassifier, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHTS_NAME
    save_file({name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}, path)
    (folder / CONFIG_NAME).write_text(json.dumps(model.config, indent=2) + "\n")
    return path


def load_classifier(folder: Path | None = None) -> WorldClassifier:
    """The classifier saved in ``folder`` (default: the shipped one); its class lists must be this code's."""
    from safetensors.torch import load_file

    from ..components import ModelNotFoundError
    from ..tiny_world import TINY_WORLD_WEIGHTS

    folder = Path(folder) if folder is not None else TINY_WORLD_WEIGHTS / "classifier"
    if not (folder / WEIGHTS_NAME).is_file():
        raise ModelNotFoundError(
            f"no world classifier in {folder}: train it with "
            "`clic models train-world --stage classifier --out clic/world/weights`"
        )
    config = json.loads((folder / CONFIG_NAME).read_text())
    if config["objects"] != list(OBJECT_NAMES) or config["patterns"] != list(PATTERN_CLASSES):
        raise ValueError(f"{folder / CONFIG_NAME}: its object/pattern classes are not this world's")
    model = WorldClassifier(tuple(config["channels"]))
    model.load_state_dict(load_file(folder / WEIGHTS_NAME))
    return model.eval()


def classifier_stage() -> Stage:
    from .stage import Stage

    return Stage(
        build=lambda s: build_classifier(s.seed),
        loss=_step_loss,
        evaluate=lambda model, s: evaluate_classifier(model, s.seed),
        save=_save,
    )
