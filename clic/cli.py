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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from .cli_checks import OptionError, check_args, check_output_folder, check_positive
from .cli_tasks import add_task_commands
from .components import TINY_PRESETS, TINY_WORLD, ModelNotFoundError
from .io import InputError
from .models import load_components
from .tiny_models import save_tiny

# The one error of a bad option or input (printed as ``clic: error: <subject>: <problem>``) is
# clic.cli_checks.OptionError. CLIError is its former name, kept as an alias for callers written before (deprecated).
CLIError = OptionError


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors in the same one-line form (its default also prints the usage)."""

    def error(self, message: str) -> NoReturn:
        raise OptionError(self.prog, message)


# The former name of check_positive (commands written against it).
_positive = check_positive


# ----------------------------------------------------------------------------------------- commands


def cmd_save_random(args: argparse.Namespace) -> None:
    from .architectures import architecture, save_random

    arch = architecture(args.arch)
    started = time.perf_counter()
    path = save_random(args.arch, args.directory, seed=args.seed)
    print(
        f"wrote {arch.description} with random weights (for tests; its images mean nothing) in "
        f"{time.perf_counter() - started:.0f} s -> {path}"
    )


def cmd_methods_show(args: argparse.Namespace) -> None:
    """A method preset's settings, each with the source of its value."""
    from .methods import method_class
    from .presets import format_settings, settings_table

    try:
        cls = method_class(args.name)
    except ValueError as err:
        raise OptionError(args.name, str(err)) from None
    preset = args.preset or cls.default_preset
    if preset not in cls.presets:
        raise OptionError(
            "--preset", f"unknown preset {preset!r} of {args.name!r}; known: {', '.join(sorted(cls.presets))}"
        )
    declared = getattr(cls, "declared_settings", {}).get(preset)
    if declared is None:  # a method without a declared list: its overrides and its sources
        print(
            json.dumps(
                {"preset": preset, "overrides": cls.presets[preset], "sources": cls.sources},
                indent=2,
                ensure_ascii=False,
                default=str,
            )
        )
    elif args.json:
        print(json.dumps(settings_table(declared), indent=2))
    else:
        print(f"{args.name} --preset {preset}\n{format_settings(declared)}")


def cmd_save_tiny(args: argparse.Namespace) -> None:
    if args.single_file:
        from .checkpoints import save_single_file
        from .tiny_models import build_tiny

        if args.variant != "tiny":
            raise OptionError("--single-file", f"writes the tiny model only (SD 1.x layout), not {args.variant}")
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
        raise OptionError(args.file, str(err)) from None
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
    record = generation_gate(
        components,
        classifier,
        count=args.captions,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance,
        scorer=scorer,
    )
    print(json.dumps({"unet_step": step, **record}))


def cmd_world_checkpoint_folder(args: argparse.Namespace) -> None:
    """A unet-stage checkpoint as a labelled diffusers folder (clic.world.checkpoint_folder)."""
    from .world.checkpoint_folder import checkpoint_label, save_checkpoint_folder

    if not Path(args.checkpoint).is_file():
        raise OptionError("checkpoint", f"no such file: {args.checkpoint}")
    check_output_folder(args.out, "out")
    if Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        raise OptionError("out", f"{args.out} is not empty: give a new folder")
    try:
        step = save_checkpoint_folder(Path(args.checkpoint), Path(args.out))
    except (ModelNotFoundError, KeyError, RuntimeError, ValueError, EOFError, OSError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OptionError(args.checkpoint, f"not a unet-stage checkpoint: {first_line}") from None
    print(f"wrote {args.out} ({checkpoint_label(step)}); run a suite on it with `model: {args.out}`")


def cmd_train_world(args: argparse.Namespace) -> None:
    """One stage of the tiny world (clic.world.train): resumes from --checkpoint-dir, then writes weights + record."""
    from .world.stage import TrainSettings
    from .world.train import export_stage, train_stage

    for option, value in (("--steps", args.steps), ("--batch", args.batch)):
        _positive(value, option)
    if args.lr <= 0:
        raise OptionError("--lr", f"must be positive, got {args.lr}")
    if args.checkpoint_minutes <= 0:
        raise OptionError("--checkpoint-minutes", f"must be positive, got {args.checkpoint_minutes}")
    torch.set_num_threads(max(1, args.threads))
    settings = TrainSettings(stage=args.stage, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    checkpoint_dir = Path(args.checkpoint_dir) / args.stage
    try:
        model, result = train_stage(
            settings,
            checkpoint_dir,
            checkpoint_minutes=args.checkpoint_minutes,
            log=lambda line: print(line, flush=True),
        )
    except ModelNotFoundError as err:
        raise OptionError("--stage", str(err)) from None
    except ValueError as err:
        raise OptionError("--checkpoint-dir", str(err)) from None
    if args.out:
        record = export_stage(model, result, settings, Path(args.out))
        print(f"{args.stage}: {result.steps} steps, {result.seconds:.0f} s, gate {json.dumps(result.gate)} -> {record}")
    else:
        print(
            f"{args.stage}: {result.steps} steps, {result.seconds:.0f} s, loss {result.final_loss:.5f} "
            f"(checkpoint in {checkpoint_dir}; --out DIR writes the weights)"
        )


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="clic", description="Learn a local concept from one image and use it (CLiC).")
    commands = parser.add_subparsers(dest="command", required=True)

    add_task_commands(commands)
    _add_method_commands(commands)
    model_commands = commands.add_parser("models", help="model utilities").add_subparsers(
        dest="model_command", required=True
    )
    _add_model_files_commands(model_commands)
    _add_world_commands(model_commands)
    return parser


def _add_method_commands(commands: Any) -> None:
    """`clic methods show`."""
    methods = commands.add_parser("methods", help="what a method preset sets, and where each value comes from")
    method_commands = methods.add_subparsers(dest="method_command", required=True)
    show = method_commands.add_parser("show", help="print a preset's settings with their sources")
    show.add_argument("name", help="method name, e.g. clic")
    show.add_argument("--preset", help="default: the method's default preset")
    show.add_argument("--json", action="store_true", help="rows {setting, value, source} as JSON")
    show.set_defaults(run=cmd_methods_show)


def _add_model_files_commands(model_commands: Any) -> None:
    """`clic models save-tiny|convert|save-random`: model folders and files written."""
    tiny = model_commands.add_parser("save-tiny", help="write the seeded tiny model as a diffusers folder")
    tiny.add_argument("directory")
    tiny.add_argument("--variant", choices=TINY_PRESETS, default="tiny")
    tiny.add_argument(
        "--single-file",
        action="store_true",
        help="write DIRECTORY as one .safetensors file in the original (LDM / A1111) layout",
    )
    tiny.set_defaults(run=cmd_save_tiny)
    from .checkpoints import SINGLE_FILE_ARCHITECTURES

    convert_file = model_commands.add_parser(
        "convert", help="write a single-file SD 1.x/2.x checkpoint (.safetensors/.ckpt) as a diffusers folder, offline"
    )
    convert_file.add_argument("file", help="e.g. v1-5-pruned-emaonly.safetensors")
    convert_file.add_argument("out", help="the diffusers folder to write")
    convert_file.add_argument(
        "--arch",
        choices=tuple(SINGLE_FILE_ARCHITECTURES),
        help="the architecture (default: read from the file; SD 2.x is taken as 768-v)",
    )
    convert_file.set_defaults(run=cmd_convert)
    from .architectures import ARCHITECTURES

    random_arch = model_commands.add_parser(
        "save-random", help="write the exact SD 1.5 / SD 2.1 (768-v) architecture with random weights (~4-5 GB)"
    )
    random_arch.add_argument("--arch", required=True, choices=tuple(ARCHITECTURES))
    random_arch.add_argument("--seed", type=int, default=0)
    random_arch.add_argument("directory")
    random_arch.set_defaults(run=cmd_save_random)


def _add_world_commands(model_commands: Any) -> None:
    """`clic models train-world|world-gate|world-checkpoint-folder`: the tiny world trained, its generation gate, and
    a checkpoint as a model folder."""
    world = model_commands.add_parser(
        "train-world", help="train one stage of the tiny-world model on the synthetic scenes (seeded, resumable)"
    )
    world.add_argument("--stage", required=True, choices=("autoencoder", "scorer", "unet", "classifier"))
    world.add_argument(
        "--steps",
        type=int,
        required=True,
        help="total optimiser steps: a resumed run continues to it; fewer than the checkpoint's "
        "exports the checkpoint as it is",
    )
    world.add_argument("--batch", type=int, default=32)
    world.add_argument("--lr", type=float, default=5e-4)
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--checkpoint-dir", required=True, help="resumed from if it holds a checkpoint of the stage")
    world.add_argument("--checkpoint-minutes", type=float, default=5.0)
    world.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    world.add_argument("--out", help="write the stage's weights + JSON record here (e.g. clic/world/weights)")
    world.set_defaults(run=cmd_train_world)

    gate = model_commands.add_parser(
        "world-gate",
        help="stage 4's gate: generate from held-out captions, read object and pattern with the "
        "world classifier (and the world scorer when exported)",
    )
    gate.add_argument("--checkpoint", help="a unet-stage checkpoint.pt (default: the shipped tiny-world weights)")
    gate.add_argument("--classifier", help="the classifier folder (default: clic/world/weights/classifier)")
    gate.add_argument("--scorer", help="an exported scorer folder (default: clic/world/weights/scorer if there)")
    gate.add_argument("--captions", type=int, default=100, help="held-out captions generated from (default 100)")
    gate.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    gate.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    gate.add_argument("--seed", type=int, default=0)
    gate.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    gate.set_defaults(run=cmd_world_gate)

    folder = model_commands.add_parser(
        "world-checkpoint-folder",
        help="write a unet-stage checkpoint as a labelled diffusers folder, to run suites on it before it ships",
    )
    folder.add_argument("checkpoint", help="a unet-stage checkpoint.pt")
    folder.add_argument("out", help="a new folder")
    folder.set_defaults(run=cmd_world_checkpoint_folder)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        args.run(args)
    except (InputError, OptionError) as err:
        # One line even when a file name holds a line break: control characters are shown escaped.
        message = str(err).replace("\r", "\\r").replace("\n", "\\n")
        print(f"clic: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
