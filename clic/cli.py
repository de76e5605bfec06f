"""`clic learn|transfer|generate|match|models` — one concept from the command line.

Images and masks are read by :mod:`clic.io` (any size, PNG/JPEG, RGB(A) or L), padded to a square at the
model resolution, and every saved output is cut back to the size of the image it came from. A bad input
(a missing or unreadable file, an empty mask, a mask of another shape, an unknown method or preset, an
out-of-range option) ends with one line on stderr, ``clic: error: <file or option>: <problem>``, and exit
code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np
import torch

from .cli_checks import OptionError, check_args, check_output_folder, check_prompt_fits, concept_problem
from .concept import LearnedConcept
from .limits import image_memory_problem, schedule_steps_problem
from .io import InputError, from_model_output, load_image, load_mask, mask_from_model_output, save_image, save_mask_png, to_model_input
from .learn import ConceptSource
from .methods.base import Method, UnsupportedTask, get_method
from .device import DEVICE_HELP, DTYPES, resolve_device, resolve_dtype
from .models import (TINY_PRESETS, TINY_WORLD, ModelNotFoundError, SDComponents, components_architecture,
                     load_components, model_architecture, save_tiny)


# Working side for methods without a model (cut-and-paste): SD 1.x's native resolution.
MODEL_FREE_RESOLUTION = 512


class CLIError(Exception):
    """A bad option or input: printed as ``clic: error: <subject>: <problem>``."""

    def __init__(self, subject: str, problem: str) -> None:
        super().__init__(f"{subject}: {problem}")


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors in the same one-line form (its default also prints the usage)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(self.prog, message)


# ------------------------------------------------------------------------------------------ helpers


def _positive(value: int | None, option: str) -> None:
    if value is not None and value <= 0:
        raise CLIError(option, f"must be positive, got {value}")


# settings field -> the option that sets it, to name the option a resolved setting's error is about
SETTING_OPTIONS = {"t_start": "--t-start", "eta": "--eta", "steps": "--steps", "images": "--images",
                   "stage_one_steps": "--stage-one-steps", "threshold": "--threshold", "resolution": "--resolution"}


def _resolve(method: Method, task: str, preset: str | None, overrides: dict[str, Any]) -> Any:
    """The settings a command runs with, resolved by the one function the harness uses too
    (:meth:`clic.methods.base.Method.resolve`); its error names the option that set the value."""
    try:
        return method.resolve(task, preset, overrides)
    except (ValueError, TypeError) as err:
        text = " ".join(str(err).split())
        blamed = [key for key in sorted(overrides, key=lambda k: text.find(k)) if key in SETTING_OPTIONS and key in text]
        if not blamed:
            raise CLIError("--preset", text) from None
        if text.startswith(blamed[0] + " "):  # "t_start must lie in …" → "--t-start: must lie in …"
            text = text[len(blamed[0]) + 1:]
        raise CLIError(SETTING_OPTIONS[blamed[0]], text) from None


def _method(name: str, option: str = "--method") -> Method:
    try:
        return get_method(name)
    except ValueError as err:
        raise CLIError(option, str(err)) from None


def _load_concept(directory: str) -> tuple[LearnedConcept, Method]:
    problem = concept_problem(directory)
    if problem is not None:
        raise CLIError("--concept", problem)
    try:
        concept = LearnedConcept.load(directory)
    except FileNotFoundError as err:
        raise CLIError("--concept", str(err)) from None
    return concept, _method(concept.method, "--concept")


def _placement(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """--device and --dtype, checked: one line naming the option when the device is absent or unknown."""
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise CLIError("--device", str(err)) from None
    return device, resolve_dtype(args.dtype)


def _components(method: Method, model: str | None, concept: LearnedConcept | None = None,
                args: argparse.Namespace | None = None) -> SDComponents | None:
    """The model named by --model, else the one the concept was learned with, on --device in --dtype;
    None for model-free methods."""
    device, dtype = _placement(args) if args is not None else (torch.device("cpu"), torch.float32)
    if not method.needs_model:
        return None
    model = model or (concept.model_id if concept is not None else None)
    if not model:
        raise CLIError("--model", f"required: one of {', '.join(TINY_PRESETS)}, a diffusers folder, a single-file "
                                  "checkpoint or a cached HF id")
    if method.needs_inpainting and model == "tiny":
        model = "tiny-inpaint"
    try:
        return load_components(model, device=device, dtype=dtype)
    except ModelNotFoundError as err:
        raise CLIError("--model", str(err)) from None


def _check_object_fits(components: SDComponents | None, word: str) -> None:
    """Before any learning or denoising: the object word must leave the prompt room for the concept token."""
    if components is not None:
        try:
            check_prompt_fits(components.tokenizer, word)
        except OptionError as err:
            raise CLIError(err.subject, err.problem) from None


def _check_memory(resolution: int, images: int = 1, option: str = "--resolution") -> None:
    """Before any work: images of this side (and count) must fit this machine's memory (clic.limits)."""
    problem = image_memory_problem(resolution, images)
    if problem is not None:
        value = images if option == "--images" else resolution
        raise CLIError(option, f"{value} is too large: {problem}")


def _check_schedule(steps: int, components: SDComponents | None, option: str = "--steps") -> None:
    """A DDIM schedule of ``steps`` steps must fit the model's scheduler (clic.limits)."""
    if components is not None:
        problem = schedule_steps_problem(steps, int(components.scheduler.config.num_train_timesteps))
        if problem is not None:
            raise CLIError(option, problem)


def _check_concept_model(concept: LearnedConcept, components: SDComponents | None, model: str | None) -> None:
    """A concept runs only on the architecture it was learned on; another checkpoint of it gets a note."""
    if components is None or not model:
        return
    learned = concept.extras.get("architecture") or model_architecture(concept.model_id)
    if not learned:  # the concept does not say and its model is not here: nothing to compare
        return
    given = components_architecture(components)
    differences = [f"{key} {given.get(key)} vs {value}" for key, value in learned.items()
                   if key in given and given[key] != value]
    if differences:
        raise CLIError("--model", f"{model} has another architecture than the concept's model {concept.model_id} "
                                  f"({'; '.join(differences)}): a concept runs only on the architecture it was "
                                  f"learned on; leave --model out to use {concept.model_id}")
    if concept.weights_hash and components.weights_hash != concept.weights_hash:
        print(f"note: --model {model} is another checkpoint of the same architecture as the concept's model "
              f"{concept.model_id}: its tokens and attention weights were learned on that one", file=sys.stderr)


def _resolution(requested: int | None, components: SDComponents | None, concept: LearnedConcept | None = None) -> int:
    """--resolution, else the concept's learning resolution, else the model's native one."""
    if requested is not None:
        _positive(requested, "--resolution")  # and within memory: clic.cli_checks.check_args, before any work
        if components is not None:
            multiple = components.vae_scale_factor * 2 ** (len(components.unet.config.block_out_channels) - 1)
            if requested % multiple:
                raise CLIError("--resolution", f"must be a multiple of {multiple} for this model, got {requested}")
        return requested
    if concept is not None and concept.config.get("resolution"):
        return int(concept.config["resolution"])
    if components is not None:
        return components.resolution
    if concept is not None:
        return int(concept.arrays["source_image"].shape[-1])  # model-free concepts keep their source pixels
    return MODEL_FREE_RESOLUTION


def _model_mask(path: str, image_size: tuple[int, int], image, resolution: int) -> torch.Tensor:
    """The mask file as a (R, R) float tensor aligned with the image's model input."""
    _, mask, _ = to_model_input(image, load_mask(path, size=image_size), resolution)
    if not bool(mask.any()):
        raise CLIError(path, f"mask is empty at the model resolution {resolution}x{resolution}")
    return mask[0]


def _gray(map_2d: torch.Tensor) -> torch.Tensor:
    """(R, R) in [0, 1] as a (3, R, R) image, the form clic.io writes."""
    return map_2d.clamp(0, 1)[None].expand(3, -1, -1)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------- commands


def cmd_learn(args: argparse.Namespace) -> None:
    method = _method(args.method)
    try:
        method.preset(args.preset)
    except ValueError as err:
        raise CLIError("--preset", str(err)) from None
    _positive(args.steps, "--steps")
    components = _components(method, args.model, args=args)
    _check_object_fits(components, args.object)
    resolution = _resolution(args.resolution, components)
    image = load_image(args.image)
    image_tensor, _, _ = to_model_input(image, None, resolution, name=args.image)
    masks = [_model_mask(path, image.size, image, resolution) for path in [args.mask, *([args.mask2] if args.mask2 else [])]]
    source = ConceptSource(image_tensor, torch.stack(masks), args.object)
    overrides: dict[str, Any] = {"resolution": resolution}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.checkpoint_every:  # resumable snapshots in --out: a rerun of the same command resumes from the newest
        overrides["checkpoint_every"] = args.checkpoint_every
    config = _resolve(method, "learn", args.preset, overrides if method.needs_model else {})
    started = time.perf_counter()
    concept = method.learn(components, source, preset=args.preset, overrides=config,
                           seed=args.seed, out_dir=args.out, progress=not args.quiet)
    final = f", final loss {concept.loss_log[-1]['total']:.4f}" if concept.loss_log else ""
    print(f"learned {' '.join(concept.tokens) or 'the source'} with {method.name}/{concept.preset} in "
          f"{time.perf_counter() - started:.1f} s{final} -> {args.out}")


def cmd_transfer(args: argparse.Namespace) -> None:
    concept, method = _load_concept(args.concept)
    _positive(args.steps, "--steps")
    overrides = {key: value for key, value in (("t_start", args.t_start), ("eta", args.eta), ("steps", args.steps))
                 if value is not None}
    settings = _resolve(method, "transfer", concept.preset, overrides)  # None: the method reads no settings
    components = _components(method, args.model, concept, args)
    _check_concept_model(concept, components, args.model)
    if settings is not None:
        _check_schedule(settings.steps, components)
    _check_object_fits(components, args.object)
    resolution = _resolution(args.resolution, components, concept)
    image = load_image(args.image)
    image_tensor, _, placement = to_model_input(image, None, resolution, name=args.image)
    mask = _model_mask(args.mask, image.size, image, resolution)
    started = time.perf_counter()
    try:
        result = method.transfer(components, concept, image_tensor, mask, args.object, overrides=settings,
                                 seed=args.seed)
    except UnsupportedTask as err:
        raise CLIError("--concept", str(err)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from_model_output(result.image, placement).save(out / "edited.png")
    from_model_output(_gray(result.attention), placement).convert("L").save(out / "attention.png")
    _write_json(out / "result.json", {
        "concept": str(args.concept), "method": method.name, "preset": concept.preset, "object": args.object,
        "seed": args.seed, "overrides": overrides, "settings": settings.to_dict() if settings is not None else None,
        "resolution": resolution, "size": list(image.size),
        "model": components.weights_label if components is not None else None,
        "attention_in_mask": getattr(result, "attention_in_mask", None),
        **(result.schedule_record() if hasattr(result, "schedule_record") else {}),
        "seconds": round(time.perf_counter() - started, 3),
    })
    print(f"transferred {' '.join(concept.tokens) or 'the source'} into {args.image} -> {out / 'edited.png'}")


def cmd_generate(args: argparse.Namespace) -> None:
    concept, method = _load_concept(args.concept)
    _positive(args.steps, "--steps")
    _positive(args.images, "--images")
    overrides = {key: value for key, value in (("steps", args.steps), ("images", args.images),
                                               ("stage_one_steps", args.stage_one_steps)) if value is not None}
    try:
        method.require("generate")
    except UnsupportedTask as err:
        raise CLIError("--concept", str(err)) from None
    _check_memory(args.resolution or int(concept.config.get("resolution") or 0) or 8, overrides.get("images", 1),
                  "--images")
    settings = _resolve(method, "generate", concept.preset, overrides)  # a bad value fails before the model loads
    components = _components(method, args.model, concept, args)
    _check_concept_model(concept, components, args.model)
    _check_schedule(settings.steps, components)
    _check_object_fits(components, args.object)
    if components is not None:  # --resolution, else the concept's learning resolution, else the model's
        overrides["resolution"] = _resolution(args.resolution, components, concept)
        _check_memory(overrides["resolution"], settings.images, "--images")
    settings = _resolve(method, "generate", concept.preset, overrides)
    result = method.generate(components, concept, args.object, overrides=settings, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index, picture in enumerate(result.images):
        save_image(picture, out / f"image-{index}.png")
    print(f"generated {len(result.images)} image(s) of '{result.prompt}' -> {out}")


def cmd_match(args: argparse.Namespace) -> None:
    concept, method = _load_concept(args.concept)
    _positive(args.steps, "--steps")
    overrides = {key: value for key, value in (("steps", args.steps), ("t_start", args.t_start),
                                               ("threshold", args.threshold)) if value is not None}
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise CLIError("--threshold", f"must lie in [0, 1], got {args.threshold}")
    try:
        method.require("match")
    except UnsupportedTask as err:
        raise CLIError("--concept", str(err)) from None
    settings = _resolve(method, "match", concept.preset, overrides)
    if "source_image" not in concept.arrays:  # w* is learned from the source the concept keeps
        raise CLIError(args.concept, "the concept keeps no source image (learned by an older version): learn it again")
    components = _components(method, args.model, concept, args)
    _check_concept_model(concept, components, args.model)
    _check_schedule(settings.denoise_steps, components)
    _check_object_fits(components, args.object)
    resolution = _resolution(args.resolution, components, concept)
    image = load_image(args.image)
    image_tensor, _, placement = to_model_input(image, None, resolution, name=args.image)
    result = method.match(components, concept, image_tensor, args.object, overrides=settings, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mask = mask_from_model_output(result.mask.float(), placement)
    save_mask_png(mask, out / "mask.png")
    from_model_output(_gray(result.soft_map), placement).convert("L").save(out / "soft.png")
    _write_json(out / "result.json", {
        "concept": str(args.concept), "object": args.object, "seed": args.seed, "overrides": overrides,
        "threshold": result.threshold, "mask_fraction": float(np.mean(mask)), "size": list(image.size),
    })
    print(f"matched the concept's region in {args.image}: {float(np.mean(mask)):.1%} of the image -> {out / 'mask.png'}")


def cmd_save_random(args: argparse.Namespace) -> None:
    from .architectures import architecture, save_random

    arch = architecture(args.arch)
    started = time.perf_counter()
    path = save_random(args.arch, args.directory, seed=args.seed)
    print(f"wrote {arch.description} with random weights (for tests; its images mean nothing) in "
          f"{time.perf_counter() - started:.0f} s -> {path}")


def cmd_methods_show(args: argparse.Namespace) -> None:
    """A method preset's settings, each with the source of its value."""
    from .methods import method_class
    from .presets import format_settings, settings_table

    try:
        cls = method_class(args.name)
    except ValueError as err:
        raise CLIError(args.name, str(err)) from None
    preset = args.preset or cls.default_preset
    if preset not in cls.presets:
        raise CLIError("--preset", f"unknown preset {preset!r} of {args.name!r}; known: {', '.join(sorted(cls.presets))}")
    declared = getattr(cls, "declared_settings", {}).get(preset)
    if declared is None:  # a method without a declared list: its overrides and its sources
        print(json.dumps({"preset": preset, "overrides": cls.presets[preset], "sources": cls.sources}, indent=2,
                         ensure_ascii=False, default=str))
    elif args.json:
        print(json.dumps(settings_table(declared), indent=2))
    else:
        print(f"{args.name} --preset {preset}\n{format_settings(declared)}")


def cmd_save_tiny(args: argparse.Namespace) -> None:
    if args.single_file:
        from .checkpoints import save_single_file
        from .models import build_tiny

        if args.variant != "tiny":
            raise CLIError("--single-file", f"writes the tiny model only (SD 1.x layout), not {args.variant}")
        path = save_single_file(build_tiny(args.variant), args.directory)
        print(f"wrote the tiny model as one file in the original SD layout (random weights, for tests) -> {path}")
        return
    path = save_tiny(args.directory, args.variant)
    print(f"wrote the {args.variant} model (random weights, for tests) -> {path}")


def cmd_convert(args: argparse.Namespace) -> None:
    """A single-file checkpoint as a diffusers folder, written once (later runs load the folder)."""
    from .checkpoints import convert

    check_output_folder(args.out, "OUT")
    started = time.perf_counter()
    try:
        path = convert(args.file, args.out, arch=args.arch)
    except ModelNotFoundError as err:
        raise CLIError(args.file, str(err)) from None
    print(f"wrote {args.file} as a diffusers folder in {time.perf_counter() - started:.0f} s -> {path}")


def cmd_world_gate(args: argparse.Namespace) -> None:
    """Print stage 4's gate record (JSON) for a unet checkpoint or the shipped tiny-world weights."""
    from .world.classifier import load_classifier
    from .world.diffusion import _optional_scorer, components_of, generation_gate, load_checkpoint_model
    from .world.scorer import load_scorer

    for option, value in (("--captions", args.captions), ("--steps", args.steps)):
        _positive(value, option)
    torch.set_num_threads(max(1, args.threads))
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise CLIError("--checkpoint", f"no such file: {args.checkpoint}")
    step = None
    try:
        classifier = load_classifier(Path(args.classifier) if args.classifier else None)
        scorer = load_scorer(Path(args.scorer)) if args.scorer else _optional_scorer()
        if args.checkpoint:
            model, step = load_checkpoint_model(Path(args.checkpoint))
            components = components_of(model)
        else:
            components = load_components(TINY_WORLD)
    except (ModelNotFoundError, FileNotFoundError, ValueError) as err:
        raise CLIError("world-gate", str(err)) from None
    record = generation_gate(components, classifier, count=args.captions, seed=args.seed, steps=args.steps,
                             guidance_scale=args.guidance, scorer=scorer)
    print(json.dumps({"unet_step": step, **record}))


def cmd_train_world(args: argparse.Namespace) -> None:
    """One stage of the tiny world (clic.world.train): resumes from --checkpoint-dir, then writes weights + record."""
    from .world.train import TrainSettings, export_stage, train_stage

    for option, value in (("--steps", args.steps), ("--batch", args.batch)):
        _positive(value, option)
    if args.lr <= 0:
        raise CLIError("--lr", f"must be positive, got {args.lr}")
    if args.checkpoint_minutes <= 0:
        raise CLIError("--checkpoint-minutes", f"must be positive, got {args.checkpoint_minutes}")
    torch.set_num_threads(max(1, args.threads))
    settings = TrainSettings(stage=args.stage, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    checkpoint_dir = Path(args.checkpoint_dir) / args.stage
    try:
        model, result = train_stage(settings, checkpoint_dir, checkpoint_minutes=args.checkpoint_minutes,
                                    log=lambda line: print(line, flush=True))
    except ModelNotFoundError as err:
        raise CLIError("--stage", str(err)) from None
    except ValueError as err:
        raise CLIError("--checkpoint-dir", str(err)) from None
    if args.out:
        record = export_stage(model, result, settings, Path(args.out))
        print(f"{args.stage}: {result.steps} steps, {result.seconds:.0f} s, gate {json.dumps(result.gate)} -> {record}")
    else:
        print(f"{args.stage}: {result.steps} steps, {result.seconds:.0f} s, loss {result.final_loss:.5f} "
              f"(checkpoint in {checkpoint_dir}; --out DIR writes the weights)")


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="clic", description="Learn a local concept from one image and use it (CLiC).")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser, *, model_help: str) -> None:
        sub.add_argument("--model", help=model_help)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--resolution", type=int, help="model input side in pixels (default: the concept's or the model's)")
        sub.add_argument("--device", default="auto", help=DEVICE_HELP)
        sub.add_argument("--dtype", default="fp32", choices=tuple(DTYPES),
                         help="precision of the frozen model; trained weights keep fp32 master copies (default fp32)")

    learn = commands.add_parser("learn", help="learn a concept from a source image and its mask")
    common(learn, model_help="tiny, tiny-inpaint, a diffusers folder, a single-file SD 1.x/2.x checkpoint "
                             "(.safetensors/.ckpt) or a cached HF id")
    learn.add_argument("--image", required=True, help="source image")
    learn.add_argument("--mask", required=True, help="mask of the concept's region in the source image")
    learn.add_argument("--mask2", help="mask of a second concept in the same image (learns <v1*> and <v2*>)")
    learn.add_argument("--object", required=True, help="the object word, e.g. chair")
    learn.add_argument("--steps", type=int, help="learning steps (default: the preset's)")
    learn.add_argument("--out", required=True, help="concept folder to write")
    learn.add_argument("--checkpoint-every", type=int, default=0,
                       help="write a resumable snapshot into OUT/checkpoints every N steps; the same command run "
                            "again after an interruption resumes from the newest (default 0: none)")
    learn.add_argument("--method", default="clic")
    learn.add_argument("--preset", default=None, help="named configuration of the method (default: its default)")
    learn.add_argument("--quiet", action="store_true", help="no progress bar")
    learn.set_defaults(run=cmd_learn)

    transfer = commands.add_parser("transfer", help="transfer a learned concept into a target region")
    common(transfer, model_help="default: the model the concept was learned with")
    transfer.add_argument("--concept", required=True)
    transfer.add_argument("--image", required=True, help="target image")
    transfer.add_argument("--mask", required=True, help="target region")
    transfer.add_argument("--object", required=True)
    transfer.add_argument("--t-start", type=int, help="schedule steps kept from the noised target; editing starts at "
                                                      "timesteps[t_start] (paper: 5-15 of 50)")
    transfer.add_argument("--eta", type=float, help="attention-guidance step size (0: off)")
    transfer.add_argument("--steps", type=int, help="DDIM schedule length (default 50)")
    transfer.add_argument("--out", required=True)
    transfer.set_defaults(run=cmd_transfer)

    generate = commands.add_parser("generate", help="generate new objects carrying the concept")
    common(generate, model_help="default: the model the concept was learned with")
    generate.add_argument("--concept", required=True)
    generate.add_argument("--object", required=True)
    generate.add_argument("--steps", type=int, help="DDIM steps (default 50)")
    generate.add_argument("--stage-one-steps", type=int, help="first steps with the unmodified UNet (default 5)")
    generate.add_argument("--images", type=int, help="number of images (default 1)")
    generate.add_argument("--out", required=True)
    generate.set_defaults(run=cmd_generate)

    match = commands.add_parser("match", help="predict the concept's region in a target image (RoI matching)")
    common(match, model_help="default: the model the concept was learned with")
    match.add_argument("--concept", required=True)
    match.add_argument("--image", required=True, help="target image")
    match.add_argument("--object", required=True)
    match.add_argument("--steps", type=int, help="w* learning steps (default 500)")
    match.add_argument("--t-start", type=int, help="DDIM steps read while denoising the target (default 25 of 50)")
    match.add_argument("--threshold", type=float, help="on the min-max normalised map (default 0.5)")
    match.add_argument("--out", required=True)
    match.set_defaults(run=cmd_match)

    methods = commands.add_parser("methods", help="what a method preset sets, and where each value comes from")
    method_commands = methods.add_subparsers(dest="method_command", required=True)
    show = method_commands.add_parser("show", help="print a preset's settings with their sources")
    show.add_argument("name", help="method name, e.g. clic")
    show.add_argument("--preset", help="default: the method's default preset")
    show.add_argument("--json", action="store_true", help="rows {setting, value, source} as JSON")
    show.set_defaults(run=cmd_methods_show)

    models = commands.add_parser("models", help="model utilities")
    model_commands = models.add_subparsers(dest="model_command", required=True)
    tiny = model_commands.add_parser("save-tiny", help="write the seeded tiny model as a diffusers folder")
    tiny.add_argument("directory")
    tiny.add_argument("--variant", choices=TINY_PRESETS, default="tiny")
    tiny.add_argument("--single-file", action="store_true",
                      help="write DIRECTORY as one .safetensors file in the original (LDM / A1111) layout")
    tiny.set_defaults(run=cmd_save_tiny)
    from .checkpoints import SINGLE_FILE_ARCHITECTURES

    convert_file = model_commands.add_parser(
        "convert", help="write a single-file SD 1.x/2.x checkpoint (.safetensors/.ckpt) as a diffusers folder, offline")
    convert_file.add_argument("file", help="e.g. v1-5-pruned-emaonly.safetensors")
    convert_file.add_argument("out", help="the diffusers folder to write")
    convert_file.add_argument("--arch", choices=tuple(SINGLE_FILE_ARCHITECTURES),
                              help="the architecture (default: read from the file; SD 2.x is taken as 768-v)")
    convert_file.set_defaults(run=cmd_convert)
    from .architectures import ARCHITECTURES

    random_arch = model_commands.add_parser(
        "save-random", help="write the exact SD 1.5 / SD 2.1 (768-v) architecture with random weights (~4-5 GB)")
    random_arch.add_argument("--arch", required=True, choices=tuple(ARCHITECTURES))
    random_arch.add_argument("--seed", type=int, default=0)
    random_arch.add_argument("directory")
    random_arch.set_defaults(run=cmd_save_random)

    world = model_commands.add_parser(
        "train-world", help="train one stage of the tiny-world model on the synthetic scenes (seeded, resumable)")
    world.add_argument("--stage", required=True, choices=("autoencoder", "scorer", "unet", "classifier"))
    world.add_argument("--steps", type=int, required=True,
                       help="total optimiser steps: a resumed run continues to it; fewer than the checkpoint's "
                            "exports the checkpoint as it is")
    world.add_argument("--batch", type=int, default=32)
    world.add_argument("--lr", type=float, default=5e-4)
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--checkpoint-dir", required=True, help="resumed from if it holds a checkpoint of the stage")
    world.add_argument("--checkpoint-minutes", type=float, default=5.0)
    world.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    world.add_argument("--out", help="write the stage's weights + JSON record here (e.g. clic/world/weights)")
    world.set_defaults(run=cmd_train_world)

    gate = model_commands.add_parser(
        "world-gate", help="stage 4's gate: generate from held-out captions, read object and pattern with the "
                           "world classifier (and the world scorer when exported)")
    gate.add_argument("--checkpoint", help="a unet-stage checkpoint.pt (default: the shipped tiny-world weights)")
    gate.add_argument("--classifier", help="the classifier folder (default: clic/world/weights/classifier)")
    gate.add_argument("--scorer", help="an exported scorer folder (default: clic/world/weights/scorer if there)")
    gate.add_argument("--captions", type=int, default=100, help="held-out captions generated from (default 100)")
    gate.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    gate.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    gate.add_argument("--seed", type=int, default=0)
    gate.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    gate.set_defaults(run=cmd_world_gate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        args.run(args)
    except (CLIError, InputError, OptionError) as err:
        # One line even when a file name holds a line break: control characters are shown escaped.
        message = str(err).replace("\r", "\\r").replace("\n", "\\n")
        print(f"clic: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
