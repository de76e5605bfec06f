"""What the task commands (:mod:`clic.cli_tasks`) read from their options: the method, the concept, the model on
its device, the resolved settings, the resolution and the masks, each checked before any work where it can. Every
check raises :class:`clic.cli_checks.OptionError` naming the option or file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .cli_checks import OptionError, check_positive, check_prompt_fits, concept_problem
from .components import TINY_PRESETS, ModelNotFoundError, SDComponents
from .concept import LearnedConcept
from .device import resolve_device, resolve_dtype
from .io import load_mask, to_model_input
from .limits import image_memory_problem, schedule_steps_problem
from .methods.base import Method, get_method
from .models import components_architecture, load_components, model_architecture

# Working side for methods without a model (cut-and-paste): SD 1.x's native resolution.
MODEL_FREE_RESOLUTION = 512

# settings field -> the option that sets it, to name the option a resolved setting's error is about
SETTING_OPTIONS = {
    "t_start": "--t-start",
    "read_steps": "--read-steps",
    "eta": "--eta",
    "steps": "--steps",
    "images": "--images",
    "stage_one_steps": "--stage-one-steps",
    "threshold": "--threshold",
    "resolution": "--resolution",
}


def resolve_settings(method: Method, task: str, preset: str | None, overrides: dict[str, Any]) -> Any:
    """The settings a command runs with, resolved by the one function the harness uses too
    (:meth:`clic.methods.base.Method.resolve`); its error names the option that set the value."""
    try:
        return method.resolve(task, preset, overrides)
    except (ValueError, TypeError) as err:
        text = " ".join(str(err).split())
        blamed = [
            key for key in sorted(overrides, key=lambda k: text.find(k)) if key in SETTING_OPTIONS and key in text
        ]
        if not blamed:
            raise OptionError("--preset", text) from None
        if text.startswith(blamed[0] + " "):  # "t_start must lie in …" → "--t-start: must lie in …"
            text = text[len(blamed[0]) + 1 :]
        raise OptionError(SETTING_OPTIONS[blamed[0]], text) from None


def method_named(name: str, option: str = "--method") -> Method:
    try:
        return get_method(name)
    except ValueError as err:
        raise OptionError(option, str(err)) from None


def load_concept(directory: str) -> tuple[LearnedConcept, Method]:
    problem = concept_problem(directory)
    if problem is not None:
        raise OptionError("--concept", problem)
    try:
        concept = LearnedConcept.load(directory)
    except FileNotFoundError as err:
        raise OptionError("--concept", str(err)) from None
    return concept, method_named(concept.method, "--concept")


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """--device and --dtype, checked: one line naming the option when the device is absent or unknown."""
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise OptionError("--device", str(err)) from None
    return device, resolve_dtype(args.dtype)


def components_for(
    method: Method, model: str | None, concept: LearnedConcept | None = None, args: argparse.Namespace | None = None
) -> SDComponents | None:
    """The model named by --model, else the one the concept was learned with, on --device in --dtype;
    None for model-free methods."""
    device, dtype = device_and_dtype(args) if args is not None else (torch.device("cpu"), torch.float32)
    if not method.needs_model:
        return None
    model = model or (concept.model_id if concept is not None else None)
    if not model:
        raise OptionError(
            "--model",
            f"required: one of {', '.join(TINY_PRESETS)}, a diffusers folder, a single-file "
            "checkpoint or a cached HF id",
        )
    if method.needs_inpainting and model == "tiny":
        model = "tiny-inpaint"
    try:
        return load_components(model, device=device, dtype=dtype)
    except ModelNotFoundError as err:
        raise OptionError("--model", str(err)) from None


def check_object_fits(components: SDComponents | None, word: str) -> None:
    """Before any learning or denoising: the object word must leave the prompt room for the concept token."""
    if components is not None:
        check_prompt_fits(components.tokenizer, word)


def check_memory(resolution: int, images: int = 1, option: str = "--resolution") -> None:
    """Before any work: images of this side (and count) must fit this machine's memory (clic.limits)."""
    problem = image_memory_problem(resolution, images)
    if problem is not None:
        value = images if option == "--images" else resolution
        raise OptionError(option, f"{value} is too large: {problem}")


def check_schedule(steps: int, components: SDComponents | None, option: str = "--steps") -> None:
    """A DDIM schedule of ``steps`` steps must fit the model's scheduler (clic.limits)."""
    if components is not None:
        problem = schedule_steps_problem(steps, int(components.scheduler.config.num_train_timesteps))
        if problem is not None:
            raise OptionError(option, problem)


def check_concept_model(concept: LearnedConcept, components: SDComponents | None, model: str | None) -> None:
    """A concept runs only on the architecture it was learned on; another checkpoint of it gets a note."""
    if components is None or not model:
        return
    learned = concept.extras.get("architecture") or model_architecture(concept.model_id)
    if not learned:  # the concept does not say and its model is not here: nothing to compare
        return
    given = components_architecture(components)
    differences = [
        f"{key} {given.get(key)} vs {value}" for key, value in learned.items() if key in given and given[key] != value
    ]
    if differences:
        raise OptionError(
            "--model",
            f"{model} has another architecture than the concept's model {concept.model_id} "
            f"({'; '.join(differences)}): a concept runs only on the architecture it was "
            f"learned on; leave --model out to use {concept.model_id}",
        )
    if concept.weights_hash and components.weights_hash != concept.weights_hash:
        print(
            f"note: --model {model} is another checkpoint of the same architecture as the concept's model "
            f"{concept.model_id}: its tokens and attention weights were learned on that one",
            file=sys.stderr,
        )


def resolution_for(
    requested: int | None, components: SDComponents | None, concept: LearnedConcept | None = None
) -> int:
    """--resolution, else the concept's learning resolution, else the model's native one."""
    if requested is not None:
        check_positive(requested, "--resolution")  # and within memory: clic.cli_checks.check_args, before any work
        if components is not None:
            multiple = components.vae_scale_factor * 2 ** (len(components.unet.config.block_out_channels) - 1)
            if requested % multiple:
                raise OptionError("--resolution", f"must be a multiple of {multiple} for this model, got {requested}")
        return requested
    if concept is not None and concept.config.get("resolution"):
        return int(concept.config["resolution"])
    if components is not None:
        return components.resolution
    if concept is not None:
        return int(concept.arrays["source_image"].shape[-1])  # model-free concepts keep their source pixels
    return MODEL_FREE_RESOLUTION


def model_mask(path: str, image_size: tuple[int, int], image, resolution: int) -> torch.Tensor:
    """The mask file as a (R, R) float tensor aligned with the image's model input."""
    _, mask, _ = to_model_input(image, load_mask(path, size=image_size), resolution)
    if not bool(mask.any()):
        raise OptionError(path, f"mask is empty at the model resolution {resolution}x{resolution}")
    return mask[0]


def gray(map_2d: torch.Tensor) -> torch.Tensor:
    """(R, R) in [0, 1] as a (3, R, R) image, the form clic.io writes."""
    return map_2d.clamp(0, 1)[None].expand(3, -1, -1)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
