"""``tiny-world``: the tiny architectures with the weights trained on the synthetic scenes (:mod:`clic.world`,
``clic models train-world``), shipped under ``clic/world/weights/``, one folder per training stage; the SD 1.x
layout and scheduler of ``tiny``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .components import TINY_WORLD, TINY_WORLD_LABEL, ModelDescription, ModelNotFoundError, SDComponents
from .provenance import weights_fingerprint
from .tiny_models import SD_SCHEDULER_CONFIG, tiny_tokenizer

TINY_WORLD_WEIGHTS = Path(__file__).parent / "world" / "weights"
TINY_WORLD_PARTS = {"vae": "autoencoder", "unet": "unet", "text_encoder": "text_encoder"}  # component: folder


def tiny_world_folders() -> dict[str, Path]:
    """The shipped stage folders of tiny-world; a missing stage is one error naming the command that trains it."""
    folders = {component: TINY_WORLD_WEIGHTS / folder for component, folder in TINY_WORLD_PARTS.items()}
    missing = [folder for folder in folders.values() if not (folder / "config.json").is_file()]
    if missing:
        names = ", ".join(folder.name for folder in missing)
        raise ModelNotFoundError(
            f"{TINY_WORLD}: the trained weights of {names} are not shipped yet (looked in {TINY_WORLD_WEIGHTS}); "
            f"train them with `clic models train-world --stage STAGE --out {TINY_WORLD_WEIGHTS}` (issue 29)"
        )
    return folders


def tiny_world_fingerprint(folders: dict[str, Path]) -> str:
    """Identity of the shipped weights (the same in describe_model and when loaded, as workers check)."""
    return hashlib.sha256("".join(weights_fingerprint(folders[c]) for c in sorted(folders)).encode()).hexdigest()[:16]


def build_tiny_world() -> SDComponents:
    """The tiny architectures with the weights trained on the synthetic world: SD 1.x-shaped (ε-prediction, SD's
    scheduler config, CLIP tokenizer), so every method runs on it unchanged."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    folders = tiny_world_folders()
    vae = AutoencoderKL.from_pretrained(folders["vae"])
    unet = UNet2DConditionModel.from_pretrained(folders["unet"])
    components = SDComponents(
        tokenizer=tiny_tokenizer(),
        text_encoder=CLIPTextModel.from_pretrained(folders["text_encoder"]),
        unet=unet,
        vae=vae,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        model_id=TINY_WORLD,
        weights_hash=tiny_world_fingerprint(folders),
        resolution=int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1),
    )
    return components.freeze()


def describe_tiny_world() -> ModelDescription:
    """The shipped files, fingerprinted like any folder, without loading them."""
    folders = tiny_world_folders()
    factor = 2 ** (len(json.loads((folders["vae"] / "config.json").read_text())["block_out_channels"]) - 1)
    sample_size = json.loads((folders["unet"] / "config.json").read_text())["sample_size"]
    return ModelDescription(TINY_WORLD, tiny_world_fingerprint(folders), TINY_WORLD_LABEL, int(sample_size) * factor)
