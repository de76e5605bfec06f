"""``clic-bench doctor [SUITE]``: every model and metric weight a suite needs, found where, or missing with the
command that gets it (preflight names only what is missing, and stops there).

One line per need: ``found``/``MISSING``, what it is, and where it is (or the line saying how to get it: the same
text preflight prints). Without a suite, the shipped smoke suite's needs. Reads configs, cache indexes and file
headers only: no weights are loaded and no cluster is started. Exit code 1 when something is missing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "smoke.yaml"


def model_lines(suite) -> list[tuple[bool, str]]:
    """(found, line) for the suite's model(s): the main one and each method's (inpainting) model."""
    from clic.models import ModelNotFoundError, describe_model

    from .resolve import model_for

    lines, seen = [], set()
    for model in [suite.model, *[model_for(spec.name, suite) for spec in suite.methods]]:
        if model is None or model in seen:
            continue
        seen.add(model)
        try:
            description = describe_model(model)
        except ModelNotFoundError as problem:
            lines.append((False, f"model {model}: {' '.join(str(problem).split())}"))
            continue
        where = (
            "built from code (seeded tiny model, labelled tiny-random)"
            if description.weights_label == "tiny-random"
            else description.model_id
        )
        lines.append(
            (True, f"model {model}: {where} (native {description.resolution} px, weights {description.weights_hash})")
        )
    return lines


def metric_lines(suite) -> list[tuple[bool, str]]:
    """(found, line) per metric: its weight files and where they are, none needed, or missing and how to get them."""
    from ..metrics import metric_class
    from ..metrics.base import MetricSettings

    settings = MetricSettings(allow_random=False, options={k: dict(v) for k, v in suite.metric_options.items()})
    lines = []
    for name in suite.metrics:
        cls = metric_class(name)
        missing = getattr(cls, "missing_weights", None)
        problems = missing(settings) if missing else []
        if problems:
            lines += [(False, f"metric {name}: {problem}") for problem in problems]
            continue
        found = getattr(cls, "weights_found", None)
        where = found(settings) if found else []
        lines.append((True, f"metric {name}: {'; '.join(where) if where else 'no weights (closed form)'}"))
    return lines


def doctor(suite_path: str | Path, sets: Sequence[str] = ()) -> list[tuple[bool, str]]:
    from .suite import load_suite

    suite = load_suite(suite_path, sets)
    return model_lines(suite) + metric_lines(suite)


def doctor_main(args: argparse.Namespace) -> int:
    lines = doctor(args.suite or DEFAULT_SUITE, getattr(args, "set", None) or ())
    for found, line in lines:
        print(f"{'found  ' if found else 'MISSING'} {line}")
    missing = sum(not found for found, _ in lines)
    print(f"{len(lines) - missing} found, {missing} missing")
    return 1 if missing else 0
