"""Loading of the networks the metrics score with: CLIP (open_clip) and LPIPS (AlexNet or world CLIP trunk).

Real weights are only ever read from local files or caches; nothing here downloads, so a missing model
fails in milliseconds instead of retrying a hub that is not reachable. When the weights are missing:
- ``settings.allow_random`` False -> ``WeightsUnavailable``, one line naming the model and how to get it;
- ``settings.allow_random`` True -> a tiny random-weight model built with a fixed seed (deterministic),
  labelled ``TINY_RANDOM`` so no table mistakes its numbers for real ones.

Suite options (``MetricSettings.options``):
- ``clip``: ``model`` (an open_clip architecture name, default ViT-B-32), ``pretrained`` (an
  open_clip tag already in the local cache, or a local .bin/.pt/.safetensors file; default "openai"),
  ``cache_dir`` (where open_clip downloads went, default the Hugging Face cache / ~/.cache/clip),
  ``batch_size``.
  ``model: tiny-world`` is the world scorer (:mod:`clic.world.scorer`), read from ``pretrained`` when that is
  a folder, else from the shipped ``clic/world/weights/scorer``; its numbers carry the tiny-world label.
- ``lpips``: ``net`` (``alex``, default: AlexNet read from torch hub's checkpoint cache, with lpips' v0.1 heads;
  ``tiny-world``: the world scorer's ViT trunk with unit weights, :mod:`harness.metrics.world_lpips`, read from
  the ``pretrained`` folder or the shipped ``clic/world/weights/scorer``), ``pretrained``, ``batch_size``.

Every build increments ``LOAD_COUNT[kind]`` so tests (and the runner) can check that a metric instance
loads its model once however many batches it scores.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .base import TINY_RANDOM, MetricSettings
from .options import WORLD_CLIP, WORLD_LPIPS_NET

# open_clip (which imports transformers and timm) and lpips (torchvision, torch._dynamo) are imported where a
# model is built or a CLIP tag is looked up: seconds that a driver checking weights files, or a metric actor
# scoring SSIM only, does not spend (tests/harness/test_lazy_imports.py).
if TYPE_CHECKING:
    import lpips

_log = logging.getLogger(__name__)

LOAD_COUNT: Counter[str] = Counter()  # "clip" / "lpips" -> number of models built in this process

CLIP_OPTIONS_KEY = "clip"
LPIPS_OPTIONS_KEY = "lpips"
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "openai"
TINY_CLIP_MODEL = "clic-tiny-clip"  # harness/metrics/configs/clic-tiny-clip.json
TINY_SEED = 0
DEFAULT_BATCH_SIZE = 32

LPIPS_NET = "alex"
LPIPS_HEADS_VERSION = "0.1"  # the linear-head calibration lpips ships (weights/v0.1/alex.pth)
LPIPS_PACKAGE_VERSION = package_version("lpips")
# The file name of torchvision's AlexNet_Weights.IMAGENET1K_V1 in the torch hub cache (the basename of its URL;
# tests/harness/test_metrics.py checks it against torchvision), named here so that checking for it imports nothing.
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"

_CONFIG_DIR = Path(__file__).with_name("configs")


def _open_clip():
    """open_clip, with the tiny CLIP registered like any of its architectures (so "clic-tiny-clip" also works
    as a `model` option)."""
    import open_clip

    if TINY_CLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR / f"{TINY_CLIP_MODEL}.json")
    return open_clip


class WeightsUnavailable(RuntimeError):
    """Real weights are not on this machine and random weights were not allowed."""


@dataclass(frozen=True)
class ClipModel:
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: tuple[int, int]  # (H, W) the vision tower expects
    mean: torch.Tensor  # (1, 3, 1, 1) normalisation from the model's preprocess config
    std: torch.Tensor
    weights: str
    device: torch.device
    batch_size: int


@dataclass(frozen=True)
class LpipsModel:
    model: lpips.LPIPS | torch.nn.Module  # a world_lpips.WorldTrunkLpips with ``lpips.net: tiny-world``
    weights: str
    device: torch.device
    batch_size: int


# One CLIP per configuration and device in a process: the CLIP metrics of a metric actor (clip_image,
# clip_text, esr, clip_masked, concept_classification) score with one model instead of a copy each.
_SHARED_CLIP: dict[tuple[Any, ...], tuple[torch.nn.Module, str, Callable[[list[str]], torch.Tensor]]] = {}


def load_clip(settings: MetricSettings) -> ClipModel:
    """The configured CLIP from local weights, else (if allowed) the tiny random one; built once per process
    for each configuration and shared by every metric that asks for it (frozen, in eval mode)."""
    options = settings.for_metric(CLIP_OPTIONS_KEY)
    model_name = str(options.get("model", DEFAULT_CLIP_MODEL))
    pretrained = str(options.get("pretrained", DEFAULT_CLIP_PRETRAINED))
    cache_dir = options.get("cache_dir")
    device = torch.device(settings.device)
    key = (model_name, pretrained, cache_dir, str(device), settings.allow_random)
    if key not in _SHARED_CLIP:
        _SHARED_CLIP[key] = _build_clip(model_name, pretrained, cache_dir, device, settings.allow_random)
    model, weights, tokenizer = _SHARED_CLIP[key]
    preprocess = model.visual.preprocess_cfg
    size = preprocess["size"]
    image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return ClipModel(
        model=model,
        tokenizer=tokenizer,
        image_size=image_size,
        mean=torch.tensor(preprocess["mean"], dtype=torch.float32).view(1, 3, 1, 1),
        std=torch.tensor(preprocess["std"], dtype=torch.float32).view(1, 3, 1, 1),
        weights=weights,
        device=device,
        batch_size=int(options.get("batch_size", DEFAULT_BATCH_SIZE)),
    )


def _build_clip(
    model_name: str, pretrained: str, cache_dir: str | None, device: torch.device, allow_random: bool
) -> tuple[torch.nn.Module, str, Callable[[list[str]], torch.Tensor]]:
    """(model, weights label, tokenizer): the real CLIP from local weights, else the tiny random one."""
    try:
        if model_name == WORLD_CLIP:
            model, weights, tokenizer = _build_world_clip(pretrained, device)
        else:
            model, weights = _build_real_clip(model_name, pretrained, cache_dir, device)
            tokenizer = _open_clip().get_tokenizer(model_name)
    except WeightsUnavailable as missing:
        if not allow_random:
            raise
        _log.warning("%s -> scoring with the tiny random CLIP, labelled %r", missing, TINY_RANDOM)
        model, weights, tokenizer = _build_tiny_clip(device), TINY_RANDOM, _open_clip().get_tokenizer(TINY_CLIP_MODEL)
    LOAD_COUNT["clip"] += 1
    return model.eval().requires_grad_(False), weights, tokenizer


def world_clip_folder(pretrained: str) -> Path:
    """Where the world scorer is read from: ``pretrained`` when it is a folder, else the shipped one."""
    if pretrained != DEFAULT_CLIP_PRETRAINED and os.path.isdir(pretrained):
        return Path(pretrained)
    from clic.tiny_world import TINY_WORLD_WEIGHTS

    return TINY_WORLD_WEIGHTS / "scorer"


def _world_clip_missing(pretrained: str) -> str | None:
    from clic.world.scorer import SCORER_WEIGHTS

    folder = world_clip_folder(pretrained)
    if (folder / SCORER_WEIGHTS).is_file():
        return None
    return (
        f"the world CLIP (tiny-world) is not in {folder}: export it with `clic models train-world --stage scorer "
        f"--out clic/world/weights`, or set clip.pretrained to a folder holding {SCORER_WEIGHTS}"
    )


def _build_world_clip(pretrained: str, device: torch.device) -> tuple[torch.nn.Module, str, Callable]:
    """The world scorer, labelled like the tiny-world model (trained on the synthetic sets, not a real CLIP)."""
    missing = _world_clip_missing(pretrained)
    if missing:
        raise WeightsUnavailable(missing)
    from clic.components import TINY_WORLD_LABEL
    from clic.world.scorer import WORLD_CLIP_MODEL, load_scorer, scorer_open_clip

    model = load_scorer(world_clip_folder(pretrained)).to(device)
    return model, TINY_WORLD_LABEL, scorer_open_clip().get_tokenizer(WORLD_CLIP_MODEL)


def missing_clip_weights(settings: MetricSettings) -> list[str]:
    """One line per CLIP weight file :func:`load_clip` would not find (empty when all are there or random
    weights are allowed); reads only the cache index, so a driver checks it before anything runs."""
    if settings.allow_random:
        return []
    options = settings.for_metric(CLIP_OPTIONS_KEY)
    model_name = str(options.get("model", DEFAULT_CLIP_MODEL))
    if model_name == WORLD_CLIP:
        missing = _world_clip_missing(str(options.get("pretrained", DEFAULT_CLIP_PRETRAINED)))
        return [missing] if missing else []
    try:
        if _open_clip().get_model_config(model_name) is None:
            raise ValueError(
                f"unknown CLIP model {model_name!r}: not an open_clip architecture (see open_clip.list_models())"
            )
        _local_clip_checkpoint(
            model_name, str(options.get("pretrained", DEFAULT_CLIP_PRETRAINED)), options.get("cache_dir")
        )
    except (WeightsUnavailable, ValueError) as problem:
        return [str(problem)]
    return []


def clip_weights_found(settings: MetricSettings) -> list[str]:
    """Where the CLIP weights :func:`load_clip` would read are (``clic-bench doctor``); empty when missing."""
    options = settings.for_metric(CLIP_OPTIONS_KEY)
    model_name = str(options.get("model", DEFAULT_CLIP_MODEL))
    pretrained = str(options.get("pretrained", DEFAULT_CLIP_PRETRAINED))
    if model_name == WORLD_CLIP:
        folder = world_clip_folder(pretrained)
        return [] if _world_clip_missing(pretrained) else [f"CLIP {WORLD_CLIP} (the world scorer): {folder}"]
    try:
        checkpoint, _ = _local_clip_checkpoint(model_name, pretrained, options.get("cache_dir"))
    except (WeightsUnavailable, ValueError, RuntimeError):
        return []
    return [f"CLIP {model_name}/{pretrained}: {checkpoint}"]


def _build_real_clip(
    model_name: str, pretrained: str, cache_dir: str | None, device: torch.device
) -> tuple[torch.nn.Module, str]:
    open_clip = _open_clip()
    if open_clip.get_model_config(model_name) is None:
        # A misspelt architecture is a configuration error, not missing weights: never fall back on it.
        raise ValueError(
            f"unknown CLIP model {model_name!r}: not an open_clip architecture (see open_clip.list_models())"
        )
    checkpoint, tag_config = _local_clip_checkpoint(model_name, pretrained, cache_dir)
    model, _, _ = open_clip.create_model_and_transforms(
        model_name,
        pretrained=checkpoint,
        device=device,
        # Loading by path loses what the tag knows: its activation and normalisation.
        force_quick_gelu=bool(tag_config.get("quick_gelu", False)),
        image_mean=tag_config.get("mean"),
        image_std=tag_config.get("std"),
    )
    return model, f"{model_name}/{pretrained}"


def _local_clip_checkpoint(model_name: str, pretrained: str, cache_dir: str | None) -> tuple[str, dict[str, Any]]:
    """The local file holding ``pretrained`` for ``model_name`` and its tag config, without any download."""
    if os.path.isfile(pretrained):
        return pretrained, {}
    tag_config = _open_clip().get_pretrained_cfg(model_name, pretrained)
    for candidate in _cached_tag_files(tag_config, cache_dir):
        if os.path.isfile(candidate):
            return candidate, tag_config
    download = f"open_clip.create_model_and_transforms('{model_name}', pretrained='{pretrained}')"
    how_to_get = (
        f'download them on a machine with internet (python -c "import open_clip; {download}") '
        f"and copy ~/.cache/huggingface (or ~/.cache/clip) here, or set the suite's metric option clip.pretrained "
        f"to a local .bin/.pt/.safetensors file; --allow-random-metrics scores with a tiny random CLIP instead"
    )
    what = "not in the local cache" if tag_config else "neither a local file nor a known open_clip tag"
    raise WeightsUnavailable(
        f"CLIP weights {model_name}/{pretrained} are {what} (offline, nothing is downloaded): {how_to_get}"
    )


def _cached_tag_files(tag_config: dict[str, Any], cache_dir: str | None) -> list[str]:
    """Where open_clip would have stored the tag's download (HF hub cache or its URL cache)."""
    from huggingface_hub import try_to_load_from_cache  # a cache lookup only: never touches the network
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    candidates: list[str] = []
    if "file" in tag_config:
        candidates.append(tag_config["file"])
    if tag_config.get("hf_hub"):
        # "org/repo/" means the default file name; open_clip prefers a .safetensors twin when one exists.
        repo_id, filename = os.path.split(tag_config["hf_hub"])
        if not filename or filename == HF_WEIGHTS_NAME:
            names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        elif filename.endswith((".bin", ".pth")):
            names = [filename[:-4] + ".safetensors", filename]
        else:
            names = [filename]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                candidates.append(found)
    if tag_config.get("url"):
        url_cache = cache_dir or os.path.expanduser("~/.cache/clip")
        candidates.append(os.path.join(url_cache, os.path.basename(tag_config["url"])))
    return candidates


def _build_tiny_clip(device: torch.device) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's RNG stream
        torch.manual_seed(TINY_SEED)
        model, _, _ = _open_clip().create_model_and_transforms(TINY_CLIP_MODEL, pretrained=None, device=device)
    return model


def alexnet_checkpoint_path() -> Path:
    """Where torchvision keeps AlexNet's ImageNet weights (torch hub cache; honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def _lpips_missing(checkpoint: Path) -> str:
    return (
        f"LPIPS needs torchvision's AlexNet weights at {checkpoint} (offline, nothing is downloaded): on a machine "
        f"with internet run python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\" "
        f"and copy the file there (or set TORCH_HOME); --allow-random-metrics scores with a random AlexNet instead"
    )


def _lpips_net(settings: MetricSettings) -> str:
    """The configured LPIPS trunk; ``pretrained`` (a world scorer folder) with AlexNet is a configuration error."""
    options = settings.for_metric(LPIPS_OPTIONS_KEY)
    net = str(options.get("net", LPIPS_NET))
    if net != WORLD_LPIPS_NET and "pretrained" in options:
        raise ValueError(f"lpips.pretrained applies to lpips.net {WORLD_LPIPS_NET} only (net is {net})")
    return net


def missing_lpips_weights(settings: MetricSettings) -> list[str]:
    """One line when :func:`load_lpips` would not find the trunk and random weights are not allowed."""
    try:
        net = _lpips_net(settings)
    except ValueError as problem:
        return [str(problem)]
    if net == WORLD_LPIPS_NET:
        from .world_lpips import missing_world_scorer

        missing = missing_world_scorer(settings.for_metric(LPIPS_OPTIONS_KEY))
    else:
        missing = None if alexnet_checkpoint_path().is_file() else _lpips_missing(alexnet_checkpoint_path())
    return [missing] if missing and not settings.allow_random else []


def lpips_weights_found(settings: MetricSettings) -> list[str]:
    """Where LPIPS's trunk is (``clic-bench doctor``); empty when missing."""
    if settings.for_metric(LPIPS_OPTIONS_KEY).get("net") == WORLD_LPIPS_NET:
        from .world_lpips import world_scorer_found

        return world_scorer_found(settings.for_metric(LPIPS_OPTIONS_KEY))
    checkpoint = alexnet_checkpoint_path()
    return [f"AlexNet (LPIPS trunk): {checkpoint}"] if checkpoint.is_file() else []


def load_lpips(settings: MetricSettings, spatial: bool) -> LpipsModel:
    """LPIPS (AlexNet trunk, lpips' v0.1 linear heads; with ``net: tiny-world`` the world CLIP's trunk,
    :mod:`harness.metrics.world_lpips`) with the real trunk if there, else random if allowed."""
    options = settings.for_metric(LPIPS_OPTIONS_KEY)
    if _lpips_net(settings) == WORLD_LPIPS_NET:
        model, weights = _world_lpips(options, spatial, settings.allow_random)
    else:
        model, weights = _alexnet_lpips(spatial, settings.allow_random)
    LOAD_COUNT["lpips"] += 1
    device = torch.device(settings.device)
    batch_size = int(options.get("batch_size", DEFAULT_BATCH_SIZE))
    return LpipsModel(model.to(device).eval().requires_grad_(False), weights, device, batch_size)


def _world_lpips(options: dict[str, Any], spatial: bool, allow_random: bool) -> tuple[torch.nn.Module, str]:
    from .world_lpips import missing_world_scorer, world_trunk_lpips

    missing = missing_world_scorer(options)
    if missing:
        if not allow_random:
            raise WeightsUnavailable(missing)
        _log.warning("%s -> scoring with a random world trunk, labelled %r", missing, TINY_RANDOM)
    return world_trunk_lpips(options, spatial, random_seed=TINY_SEED if missing else None)


def _alexnet_lpips(spatial: bool, allow_random: bool) -> tuple[lpips.LPIPS, str]:
    checkpoint = alexnet_checkpoint_path()
    real = checkpoint.is_file()
    if not real:
        missing = _lpips_missing(checkpoint)
        if not allow_random:
            raise WeightsUnavailable(missing)
        _log.warning("%s -> scoring with a random AlexNet trunk, labelled %r", missing, TINY_RANDOM)
    import lpips

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # lpips still calls torchvision's deprecated alexnet(pretrained=...); the warning is not the user's to fix.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        torch.manual_seed(TINY_SEED)
        model = lpips.LPIPS(
            net=LPIPS_NET,
            version=LPIPS_HEADS_VERSION,
            pretrained=True,
            pnet_rand=not real,
            spatial=spatial,
            verbose=False,
        )
    weights = f"torchvision:{checkpoint.name}+lpips-v{LPIPS_HEADS_VERSION}-{LPIPS_NET}-heads" if real else TINY_RANDOM
    return model, weights
