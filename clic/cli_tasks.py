"""`clic learn|transfer|generate|match`: the four task commands and their parsers.

Part of :mod:`clic.cli` (the entry point, the model and method commands, ``main``), which runs them. What they read
from their options, and the checks on it, is :mod:`clic.cli_task_inputs`: every check raises
:class:`clic.cli_checks.OptionError` naming the option or file, before any work where it can.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli_checks import OptionError, check_positive
from .cli_task_inputs import (
    check_concept_model,
    check_memory,
    check_object_fits,
    check_schedule,
    components_for,
    gray,
    load_concept,
    method_named,
    model_mask,
    resolution_for,
    resolve_settings,
    write_json,
)
from .device import DEVICE_HELP, DTYPES
from .io import from_model_output, load_image, mask_from_model_output, save_image, save_mask_png, to_model_input
from .learn import ConceptSource
from .methods.base import UnsupportedTask

# ----------------------------------------------------------------------------------------- commands


def cmd_learn(args: argparse.Namespace) -> None:
    method = method_named(args.method)
    try:
        method.preset(args.preset)
    except ValueError as err:
        raise OptionError("--preset", str(err)) from None
    check_positive(args.steps, "--steps")
    components = components_for(method, args.model, args=args)
    check_object_fits(components, args.object)
    resolution = resolution_for(args.resolution, components)
    image = load_image(args.image)
    image_tensor, _, _ = to_model_input(image, None, resolution, name=args.image)
    masks = [
        model_mask(path, image.size, image, resolution) for path in [args.mask, *([args.mask2] if args.mask2 else [])]
    ]
    source = ConceptSource(image_tensor, torch.stack(masks), args.object)
    overrides: dict[str, Any] = {"resolution": resolution}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.checkpoint_every:  # resumable snapshots in --out: a rerun of the same command resumes from the newest
        overrides["checkpoint_every"] = args.checkpoint_every
    config = resolve_settings(method, "learn", args.preset, overrides if method.needs_model else {})
    started = time.perf_counter()
    concept = method.learn(
        components,
        source,
        preset=args.preset,
        overrides=config,
        seed=args.seed,
        out_dir=args.out,
        progress=not args.quiet,
    )
    final = f", final loss {concept.loss_log[-1]['total']:.4f}" if concept.loss_log else ""
    print(
        f"learned {' '.join(concept.tokens) or 'the source'} with {method.name}/{concept.preset} in "
        f"{time.perf_counter() - started:.1f} s{final} -> {args.out}"
    )


def cmd_transfer(args: argparse.Namespace) -> None:
    concept, method = load_concept(args.concept)
    check_positive(args.steps, "--steps")
    overrides = {
        key: value
        for key, value in (("t_start", args.t_start), ("eta", args.eta), ("steps", args.steps))
        if value is not None
    }
    settings = resolve_settings(method, "transfer", concept.preset, overrides)  # None: the method reads no settings
    components = components_for(method, args.model, concept, args)
    check_concept_model(concept, components, args.model)
    if settings is not None:
        check_schedule(settings.steps, components)
    check_object_fits(components, args.object)
    resolution = resolution_for(args.resolution, components, concept)
    image = load_image(args.image)
    image_tensor, _, placement = to_model_input(image, None, resolution, name=args.image)
    mask = model_mask(args.mask, image.size, image, resolution)
    started = time.perf_counter()
    try:
        result = method.transfer(
            components, concept, image_tensor, mask, args.object, overrides=settings, seed=args.seed
        )
    except UnsupportedTask as err:
        raise OptionError("--concept", str(err)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from_model_output(result.image, placement).save(out / "edited.png")
    from_model_output(gray(result.attention), placement).convert("L").save(out / "attention.png")
    write_json(
        out / "result.json",
        {
            "concept": str(args.concept),
            "method": method.name,
            "preset": concept.preset,
            "object": args.object,
            "seed": args.seed,
            "overrides": overrides,
            "settings": settings.to_dict() if settings is not None else None,
            "resolution": resolution,
            "size": list(image.size),
            "model": components.weights_label if components is not None else None,
            "attention_in_mask": getattr(result, "attention_in_mask", None),
            **(result.schedule_record() if hasattr(result, "schedule_record") else {}),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    print(f"transferred {' '.join(concept.tokens) or 'the source'} into {args.image} -> {out / 'edited.png'}")


def cmd_generate(args: argparse.Namespace) -> None:
    concept, method = load_concept(args.concept)
    check_positive(args.steps, "--steps")
    check_positive(args.images, "--images")
    overrides = {
        key: value
        for key, value in (("steps", args.steps), ("images", args.images), ("stage_one_steps", args.stage_one_steps))
        if value is not None
    }
    try:
        method.require("generate")
    except UnsupportedTask as err:
        raise OptionError("--concept", str(err)) from None
    check_memory(
        args.resolution or int(concept.config.get("resolution") or 0) or 8, overrides.get("images", 1), "--images"
    )
    settings = resolve_settings(
        method, "generate", concept.preset, overrides
    )  # a bad value fails before the model loads
    components = components_for(method, args.model, concept, args)
    check_concept_model(concept, components, args.model)
    check_schedule(settings.steps, components)
    check_object_fits(components, args.object)
    if components is not None:  # --resolution, else the concept's learning resolution, else the model's
        overrides["resolution"] = resolution_for(args.resolution, components, concept)
        check_memory(overrides["resolution"], settings.images, "--images")
    settings = resolve_settings(method, "generate", concept.preset, overrides)
    result = method.generate(components, concept, args.object, overrides=settings, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index, picture in enumerate(result.images):
        save_image(picture, out / f"image-{index}.png")
    print(f"generated {len(result.images)} image(s) of '{result.prompt}' -> {out}")


def _match_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The match settings given on the command line; ``--t-start``, the old name of ``--read-steps`` (match reads
    steps from the end, transfer's t_start keeps them from the start), still works with a warning."""
    read_steps = args.read_steps
    if args.deprecated_t_start is not None:
        print(
            "clic: warning: `clic match --t-start` is deprecated: use --read-steps (DDIM steps read, from the end "
            "of the schedule; --t-start of `clic transfer` counts the steps kept)",
            file=sys.stderr,
        )
        read_steps = args.deprecated_t_start if read_steps is None else read_steps
    return {
        key: value
        for key, value in (("steps", args.steps), ("read_steps", read_steps), ("threshold", args.threshold))
        if value is not None
    }


def cmd_match(args: argparse.Namespace) -> None:
    concept, method = load_concept(args.concept)
    check_positive(args.steps, "--steps")
    overrides = _match_overrides(args)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise OptionError("--threshold", f"must lie in [0, 1], got {args.threshold}")
    try:
        method.require("match")
    except UnsupportedTask as err:
        raise OptionError("--concept", str(err)) from None
    settings = resolve_settings(method, "match", concept.preset, overrides)
    if "source_image" not in concept.arrays:  # w* is learned from the source the concept keeps
        raise OptionError(
            args.concept, "the concept keeps no source image (learned by an older version): learn it again"
        )
    components = components_for(method, args.model, concept, args)
    check_concept_model(concept, components, args.model)
    check_schedule(settings.denoise_steps, components)
    check_object_fits(components, args.object)
    resolution = resolution_for(args.resolution, components, concept)
    image = load_image(args.image)
    image_tensor, _, placement = to_model_input(image, None, resolution, name=args.image)
    result = method.match(components, concept, image_tensor, args.object, overrides=settings, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mask = mask_from_model_output(result.mask.float(), placement)
    save_mask_png(mask, out / "mask.png")
    from_model_output(gray(result.soft_map), placement).convert("L").save(out / "soft.png")
    write_json(
        out / "result.json",
        {
            "concept": str(args.concept),
            "object": args.object,
            "seed": args.seed,
            "overrides": overrides,
            "threshold": result.threshold,
            "mask_fraction": float(np.mean(mask)),
            "size": list(image.size),
        },
    )
    print(
        f"matched the concept's region in {args.image}: {float(np.mean(mask)):.1%} of the image -> {out / 'mask.png'}"
    )


def common(sub: argparse.ArgumentParser, *, model_help: str) -> None:
    """The options every task command takes: model, seed, resolution, device, dtype."""
    sub.add_argument("--model", help=model_help)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument(
        "--resolution", type=int, help="model input side in pixels (default: the concept's or the model's)"
    )
    sub.add_argument("--device", default="auto", help=DEVICE_HELP)
    sub.add_argument(
        "--dtype",
        default="fp32",
        choices=tuple(DTYPES),
        help="precision of the frozen model; trained weights keep fp32 master copies (default fp32)",
    )


def add_task_commands(commands: Any) -> None:
    """The parsers of `clic learn|transfer|generate|match` (``commands``: the parser's subparsers)."""
    for add in (_add_learn, _add_transfer, _add_generate, _add_match):
        add(commands)


def _add_learn(commands: Any) -> None:
    learn = commands.add_parser("learn", help="learn a concept from a source image and its mask")
    common(
        learn,
        model_help="tiny, tiny-inpaint, a diffusers folder, a single-file SD 1.x/2.x checkpoint "
        "(.safetensors/.ckpt) or a cached HF id",
    )
    learn.add_argument("--image", required=True, help="source image")
    learn.add_argument("--mask", required=True, help="mask of the concept's region in the source image")
    learn.add_argument("--mask2", help="mask of a second concept in the same image (learns <v1*> and <v2*>)")
    learn.add_argument("--object", required=True, help="the object word, e.g. chair")
    learn.add_argument("--steps", type=int, help="learning steps (default: the preset's)")
    learn.add_argument("--out", required=True, help="concept folder to write")
    learn.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="write a resumable snapshot into OUT/checkpoints every N steps; the same command run "
        "again after an interruption resumes from the newest (default 0: none)",
    )
    learn.add_argument("--method", default="clic")
    learn.add_argument("--preset", default=None, help="named configuration of the method (default: its default)")
    learn.add_argument("--quiet", action="store_true", help="no progress bar")
    learn.set_defaults(run=cmd_learn)


def _add_transfer(commands: Any) -> None:
    transfer = commands.add_parser("transfer", help="transfer a learned concept into a target region")
    common(transfer, model_help="default: the model the concept was learned with")
    transfer.add_argument("--concept", required=True)
    transfer.add_argument("--image", required=True, help="target image")
    transfer.add_argument("--mask", required=True, help="target region")
    transfer.add_argument("--object", required=True)
    transfer.add_argument(
        "--t-start",
        type=int,
        help="schedule steps kept from the noised target; editing starts at timesteps[t_start] (paper: 5-15 of 50)",
    )
    transfer.add_argument("--eta", type=float, help="attention-guidance step size (0: off)")
    transfer.add_argument("--steps", type=int, help="DDIM schedule length (default 50)")
    transfer.add_argument("--out", required=True)
    transfer.set_defaults(run=cmd_transfer)


def _add_generate(commands: Any) -> None:
    generate = commands.add_parser("generate", help="generate new objects carrying the concept")
    common(generate, model_help="default: the model the concept was learned with")
    generate.add_argument("--concept", required=True)
    generate.add_argument("--object", required=True)
    generate.add_argument("--steps", type=int, help="DDIM steps (default 50)")
    generate.add_argument("--stage-one-steps", type=int, help="first steps with the unmodified UNet (default 5)")
    generate.add_argument("--images", type=int, help="number of images (default 1)")
    generate.add_argument("--out", required=True)
    generate.set_defaults(run=cmd_generate)


def _add_match(commands: Any) -> None:
    match = commands.add_parser("match", help="predict the concept's region in a target image (RoI matching)")
    common(match, model_help="default: the model the concept was learned with")
    match.add_argument("--concept", required=True)
    match.add_argument("--image", required=True, help="target image")
    match.add_argument("--object", required=True)
    match.add_argument("--steps", type=int, help="w* learning steps (default 500)")
    match.add_argument(
        "--read-steps",
        type=int,
        help="DDIM steps read while denoising the target, the last of the schedule (default 25 of 50)",
    )
    match.add_argument(
        "--t-start",
        dest="deprecated_t_start",
        type=int,
        metavar="T_START",
        help="deprecated alias of --read-steps (warns; transfer's --t-start counts steps kept)",
    )
    match.add_argument("--threshold", type=float, help="on the min-max normalised map (default 0.5)")
    match.add_argument("--out", required=True)
    match.set_defaults(run=cmd_match)
