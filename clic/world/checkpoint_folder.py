"""A unet-stage training checkpoint as a diffusers folder, so that suites can run on the world before stage 4's
gate passes and its weights are shipped (``clic models world-checkpoint-folder CHECKPOINT OUT``, then
``model: OUT`` in a suite). The folder is labelled as what it is: not the shipped ``tiny-world``."""

from __future__ import annotations

from pathlib import Path

from ..components import WORLD_TRAINED, sd_pipeline


def checkpoint_label(step: int) -> str:
    """The weights label every row made with such a folder carries."""
    return f"tiny-world unet checkpoint step {step}, not shipped (stage-4 gate not passed): {WORLD_TRAINED}"


def save_checkpoint_folder(checkpoint: Path, out: Path) -> int:
    """Write the checkpoint's UNet and text encoder with the world VAE, the tiny CLIP tokenizer and SD's DDIM
    scheduler config as an SD 1.x diffusers folder, with the weights marker of :func:`checkpoint_label`.
    Returns the checkpoint's step."""
    from ..provenance import write_weights_marker
    from .diffusion import components_of, load_checkpoint_model

    model, step = load_checkpoint_model(Path(checkpoint))
    sd_pipeline(components_of(model)).save_pretrained(out)
    made_by = f"clic models world-checkpoint-folder {checkpoint} {out}"
    write_weights_marker(out, checkpoint_label(step), made_by, random_weights=False)
    return step
