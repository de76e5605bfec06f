"""Handlers of ``clic-bench manifest synth`` and ``clic-bench manifest preview``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clic.synth.objects import CATEGORIES
from harness.errors import UsageError
from harness.plan.manifest import load_manifest

from .dataset import PNG_OPTIONS, write_set
from .preview import contact_sheet

MIN_SIZE = 32  # below this the smallest parts (a tower door) lose their masks


def synth_main(args: argparse.Namespace) -> int:
    if args.pairs < 1:
        raise UsageError(f"--pairs must be at least 1, got {args.pairs}")
    if args.size < MIN_SIZE:
        raise UsageError(f"--size must be at least {MIN_SIZE} pixels, got {args.size}")
    if args.seed < 0:
        raise UsageError(f"--seed must be non-negative, got {args.seed}")
    categories = CATEGORIES if args.set_name == "all" else (args.set_name,)
    manifest = write_set(Path(args.out), categories, args.pairs, args.size, args.seed)
    print(f"wrote {args.pairs * len(categories)} pairs ({', '.join(categories)}) to {manifest}")
    return 0


def preview_main(args: argparse.Namespace) -> int:
    manifest = Path(args.manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest at {manifest}")
    # The rows are validated first: a bad row is one line and is left out; an unusable manifest is an error.
    report = load_manifest(manifest)
    if not report.usable:
        raise UsageError(str(report.manifest_problems[0]))
    for problem in report.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    out = Path(args.out) if args.out else manifest.parent / "preview.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(manifest, rows=[dict(spec.raw) for spec in report.rows]).save(out, **PNG_OPTIONS)
    print(
        f"wrote {out} ({len(report.rows)} pairs"
        + (f", {report.bad_rows} bad rows left out)" if report.problems else ")")
    )
    return 0
