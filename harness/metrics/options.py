"""The options a suite may give the metrics' models (``metric_options``), declared once with their types and
allowed values. A metric declares the option families it reads (``options = {"clip": CLIP_OPTIONS}``); the suite
reader refuses an unknown key or value in one line naming it, with a "did you mean" where one is close, instead of
scoring silently with the defaults. Importing this module imports nothing heavy (the driver reads it)."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Option:
    kinds: tuple[type, ...]  # accepted Python types (YAML scalars)
    what: str  # for messages and docs
    choices: Callable[[], Sequence[str]] | Sequence[str] | None = None  # allowed values (None: any of the type)
    minimum: float | None = None

    def allowed(self) -> Sequence[str] | None:
        return self.choices() if callable(self.choices) else self.choices


@lru_cache(maxsize=1)
def open_clip_architectures() -> tuple[str, ...]:
    """open_clip's model registry (its ``model_configs/*.json``), read from the package folder without importing
    open_clip (which imports transformers and timm); () when open_clip is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return ()
    configs = Path(list(spec.submodule_search_locations)[0]) / "model_configs"
    return tuple(sorted(p.stem for p in configs.glob("*.json")))


# The world scorer (clic.world.scorer, trained by `clic models train-world --stage scorer`) as a CLIP `model`:
# the name of the diffusion model it belongs with (clic.models.TINY_WORLD, not imported: it imports torch). A suite
# with `model: tiny-world` scores its CLIP metrics with it unless it names another CLIP (harness.plan.suite).
WORLD_CLIP = "tiny-world"


# LPIPS on the world CLIP's image trunk (harness.metrics.world_lpips): the `net` a tiny-world suite's LPIPS metrics
# default to, as its CLIP metrics default to the world CLIP.
WORLD_LPIPS_NET = WORLD_CLIP


def clip_models() -> tuple[str, ...]:
    return (WORLD_CLIP, *open_clip_architectures())


CLIP_OPTIONS = {
    "model": Option((str,), "an open_clip architecture or tiny-world (the world scorer)", clip_models),
    "pretrained": Option(
        (str,),
        "an open_clip tag in the local cache, or a local .bin/.pt/.safetensors file "
        "(tiny-world: a folder exported by `clic models train-world --stage scorer`)",
    ),
    "cache_dir": Option((str,), "where open_clip downloads went"),
    "batch_size": Option((int,), "images per forward pass", minimum=1),
}
LPIPS_OPTIONS = {
    "net": Option(
        (str,),
        "the LPIPS trunk: alex (the paper's, with lpips' v0.1 heads) or tiny-world (the world CLIP's, unit weights)",
        ("alex", WORLD_LPIPS_NET),
    ),
    "pretrained": Option((str,), "net tiny-world only: a folder exported by `clic models train-world --stage scorer`"),
    "batch_size": Option((int,), "images per forward pass", minimum=1),
}
DINO_MODEL = "vit_small_patch16_224.dino"
DINO_OPTIONS = {
    "model": Option((str,), "the DINO ViT (timm name)", (DINO_MODEL,)),
    "pretrained": Option((str,), "a local DINO checkpoint file"),
    "cache_dir": Option((str,), "the Hugging Face cache folder holding timm's DINO weights"),
    "batch_size": Option((int,), "images per forward pass", minimum=1),
}
ESR_OPTIONS = {
    "candidates": Option((list,), "the class words the editing success rate chooses among"),
}


def declared_families(metric_classes: Sequence[type]) -> dict[str, dict[str, Option]]:
    """Option family -> its declared options, over the given metric classes (a family shared by several
    metrics, e.g. "clip", is one entry)."""
    families: dict[str, dict[str, Option]] = {}
    for cls in metric_classes:
        for family, spec in (getattr(cls, "options", None) or {}).items():
            families.setdefault(family, {}).update(spec)
    return families


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def option_problems(family: str, given: Mapping[str, Any], spec: Mapping[str, Option]) -> list[tuple[str, str]]:
    """(key, message) for every option of ``given`` that ``spec`` does not accept."""
    problems = []
    for key, value in given.items():
        if key not in spec:
            problems.append(
                (
                    str(key),
                    f"unknown option {key!r} of {family} (known: {', '.join(sorted(spec))})"
                    + _did_you_mean(key, sorted(spec)),
                )
            )
            continue
        option = spec[key]
        if isinstance(value, bool) or not isinstance(value, option.kinds):
            names = " or ".join(kind.__name__ for kind in option.kinds)
            problems.append((str(key), f"must be {names} ({option.what}), got {value!r}"))
            continue
        allowed = option.allowed()
        if allowed and value not in allowed:
            shown = ", ".join(list(allowed)[:12]) + (", …" if len(allowed) > 12 else "")
            problems.append(
                (str(key), f"{value!r} is not {option.what} (one of {shown})" + _did_you_mean(value, allowed))
            )
        elif option.minimum is not None and value < option.minimum:
            problems.append((str(key), f"must be at least {option.minimum:g}, got {value!r}"))
    return problems


# The fixed editing prompts the esr metric judges (``generate.prompts: esr`` in a suite): here, beside the metric
# options, so the suite reader takes them without importing the metric (numpy, scikit-image, CLIP).
EDIT_PROMPTS: tuple[str, ...] = (
    "a photo of an {object}, with {tokens} style",  # object edit: the suite's generate.objects
    "a red {object} with {tokens} style",
    "a green {object} with {tokens} style",
    "a blue {object} with {tokens} style",
    "a yellow {object} with {tokens} style",
)
