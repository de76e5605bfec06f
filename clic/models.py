"""Stable Diffusion components from a local diffusers folder, the local HF cache (offline), or `tiny`.

Four sources, one return type (:class:`SDComponents`):

* a local diffusers folder (``model_index.json`` with ``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``), e.g. a Stable Diffusion 1.x/2.x checkpoint;
* an HF model id already in the local cache, loaded with ``local_files_only`` (this machine, and most
  cluster nodes, have no route to the hub: a missing model is one clear error, not a retry loop);
* a single-file checkpoint (``*.safetensors`` / ``*.ckpt`` in the original LDM / A1111 layout), loaded offline
  by diffusers' ``from_single_file`` with the project's own configs (:mod:`clic.checkpoints`);
* ``tiny`` / ``tiny-inpaint`` / ``tiny-v``: seeded small models built from configs, as diffusers' own
  test suite does (``tiny-v`` is ``tiny`` with a v-prediction scheduler, as SD 2.x 768 models have), with a real CLIP tokenizer made from the BPE vocabulary that open_clip ships. Numbers made with
  them are labelled ``tiny-random`` everywhere.

``clic models save-tiny DIR`` writes the tiny preset as a normal diffusers folder, so the folder path
(the one real users take) is what the tests exercise. ``clic models save-random --arch sd15|sd21 DIR`` writes
the exact Stable Diffusion 1.5 / 2.1 (768-v) architectures with random weights (:mod:`clic.architectures`).

``load_components(model, device=..., dtype=...)`` moves the components once; everything the loops create
afterwards follows the model (:mod:`clic.device`). ``describe_model`` says what a model is without loading it.

The parts below the loaders: :mod:`clic.components` (the return type), :mod:`clic.tiny_models`,
:mod:`clic.tiny_world`, :mod:`clic.provenance` (fingerprints and random-weights markers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .components import (
    TINY_PRESETS,
    TINY_WORLD,
    ModelDescription,
    ModelNotFoundError,
    SDComponents,
    ddim_scheduler,
)
from .device import configure_tf32, resolve_device, resolve_dtype
from .provenance import folder_weights_label, weights_fingerprint
from .tiny_models import SD_SCHEDULER_CONFIG, TINY_TEXT_CONFIG, build_tiny, describe_tiny, save_tiny, tiny_unet_config
from .tiny_world import build_tiny_world, describe_tiny_world

# The names callers have always imported from here (tests, harness, the README): the model API in one place.
__all__ = [
    "TINY_PRESETS",
    "TINY_WORLD",
    "ModelDescription",
    "ModelNotFoundError",
    "SDComponents",
    "build_tiny",
    "ddim_scheduler",
    "describe_model",
    "load_components",
    "model_architecture",
    "save_tiny",
    "train_timesteps",
]


def train_timesteps(model: str) -> int:
    """The scheduler's ``num_train_timesteps`` of ``model``, from its config (no weights read; 1000 if unknown)."""
    from .limits import DEFAULT_TRAIN_TIMESTEPS

    if model in TINY_PRESETS:
        return int(SD_SCHEDULER_CONFIG["num_train_timesteps"])
    try:
        config = json.loads((_resolve_folder(model) / "scheduler" / "scheduler_config.json").read_text())
        return int(config.get("num_train_timesteps", DEFAULT_TRAIN_TIMESTEPS))
    except (ModelNotFoundError, OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_TRAIN_TIMESTEPS


# What must match for a concept's tokens and attention weights to fit a model: the UNet's layer structure and
# input channels (an inpainting UNet takes 9), and the text encoder's width.
ARCHITECTURE_KEYS = {
    "unet": (
        "in_channels",
        "out_channels",
        "cross_attention_dim",
        "block_out_channels",
        "layers_per_block",
        "attention_head_dim",
        "down_block_types",
        "up_block_types",
    ),
    "text_encoder": ("hidden_size", "num_hidden_layers"),
}


def architecture_of(unet_config: Any, text_config: Any) -> dict[str, Any]:
    """The architecture fields of a UNet and a text-encoder config (mappings or diffusers/transformers configs)."""

    def field(config: Any, key: str) -> Any:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        return list(value) if isinstance(value, (list, tuple)) else value

    return {
        f"{part}.{key}": field(config, key)
        for part, config in (("unet", unet_config), ("text_encoder", text_config))
        for key in ARCHITECTURE_KEYS[part]
    }


def components_architecture(components: SDComponents) -> dict[str, Any]:
    return architecture_of(dict(components.unet.config), components.text_encoder.config)


def model_architecture(model: str) -> dict[str, Any] | None:
    """``model``'s architecture from its configs (no weights read); None when the model is not on this machine."""
    if model in TINY_PRESETS:
        return architecture_of(tiny_unet_config(9 if model == "tiny-inpaint" else 4), TINY_TEXT_CONFIG)
    try:
        folder = _resolve_folder(model)
        return architecture_of(
            json.loads((folder / "unet" / "config.json").read_text()),
            json.loads((folder / "text_encoder" / "config.json").read_text()),
        )
    except (ModelNotFoundError, OSError, ValueError, TypeError):
        return None


def _is_single_file(model: str) -> bool:
    """A single-file checkpoint (``.safetensors`` / ``.ckpt``), read by :mod:`clic.checkpoints`."""
    return str(model).lower().endswith((".safetensors", ".ckpt"))


def _refuse_unsupported_folder(folder: Path) -> None:
    """SDXL, SD 3, Flux ... folders end in a raw diffusers traceback deep in loading: one line here instead."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return  # no index (a bare unet/ layout): the loaders say what is missing
    pipeline = str(index.get("_class_name", ""))
    extra = [k for k in ("text_encoder_2", "transformer", "text_encoder_3") if k in index]
    if extra or not {"unet", "vae", "text_encoder", "tokenizer"} <= set(index) or "XL" in pipeline:
        from .checkpoints import UnsupportedModelError

        raise UnsupportedModelError(
            f"{folder}: unsupported architecture ({pipeline or 'unknown pipeline'}"
            f"{', with ' + ', '.join(extra) if extra else ''}); supported: Stable Diffusion 1.x/2.x folders "
            "(StableDiffusionPipeline / StableDiffusionInpaintPipeline layout), tiny, or a single-file SD 1.x/2.x "
            "checkpoint"
        )


def _resolve_folder(model: str) -> Path:
    """The diffusers folder a model names (a local folder or a cached HF id) of an architecture the project runs."""
    folder = _find_folder(model)
    _refuse_unsupported_folder(folder)
    return folder


def _find_folder(model: str) -> Path:
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").exists() and not (folder / "unet").is_dir():
            raise ModelNotFoundError(
                f"{folder}: not a diffusers model folder (no model_index.json or unet/); "
                "expected the layout written by DiffusionPipeline.save_pretrained"
            )
        return folder
    if folder.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelNotFoundError(f"{model}: no such model folder, and not an HF model id of the form owner/name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as err:  # huggingface_hub raises several types for "not cached"
        raise ModelNotFoundError(
            f"model {model!r} is not in the local Hugging Face cache ({type(err).__name__}); this machine works "
            f"offline: on a machine with internet run `hf download {model}` and copy the cache "
            "(~/.cache/huggingface) here, or pass a local diffusers folder with --model PATH"
        ) from None


def load_components(
    model: str = "tiny", *, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32
) -> SDComponents:
    """Load SD components: ``tiny``/``tiny-inpaint``, a local diffusers folder, or a cached HF id, on ``device``
    (``auto``, ``cpu``, ``cuda[:N]``) in ``dtype`` (``fp32``/``fp16``/``bf16`` or a torch dtype).

    A local folder is recorded by its absolute path, so a concept learned from it names a model that later
    commands find from any working directory.
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    configure_tf32(device)  # on by default on GPUs that have it (CLIC_TF32=0: off)
    if model in TINY_PRESETS:
        return build_tiny(model).to(device, dtype)
    if model == TINY_WORLD:
        return build_tiny_world().to(device, dtype)
    if _is_single_file(model):  # v1-5-pruned-emaonly.safetensors: diffusers' from_single_file, offline
        from .checkpoints import load_single_file

        return load_single_file(model, device=device, dtype=dtype)
    folder = _resolve_folder(model)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")  # fp32; .to() below casts unless it must stay fp32
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(f"{folder}: cannot load the SD components: {first_line}") from None
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    components = SDComponents(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        model_id=str(folder.resolve()) if Path(model).expanduser().is_dir() else model,
        weights_hash=weights_fingerprint(folder),
        resolution=int(unet.config.sample_size) * vae_factor,
    )
    components.label = folder_weights_label(folder, components.weights_hash, components.model_id)
    return components.to(device, dtype).freeze()


def describe_model(model: str) -> ModelDescription:
    """Identity and native resolution of a model without loading a real checkpoint's weights.

    For a folder or cached HF id this reads only configs and file fingerprints, so a driver can plan a
    run on a machine without a GPU (or the memory for SD) in a fraction of a second.
    """
    if model in TINY_PRESETS:  # built from code: remembered per process and on disk
        return describe_tiny(model)
    if model == TINY_WORLD:  # shipped files: fingerprinted like any folder, without loading them
        return describe_tiny_world()
    if _is_single_file(model):  # the architecture from the file's header; the weights are not read
        from .checkpoints import detect_architecture, file_fingerprint

        path = Path(model).expanduser().resolve()
        arch = detect_architecture(path)
        return ModelDescription(str(path), file_fingerprint(path, arch.name), str(path), arch.resolution)
    folder = _resolve_folder(model)
    try:
        unet_config = json.loads((folder / "unet" / "config.json").read_text())
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"{folder}: cannot read the UNet/VAE configs ({type(err).__name__})") from None
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    fingerprint = weights_fingerprint(folder)
    return ModelDescription(
        model, fingerprint, folder_weights_label(folder, fingerprint, model), int(unet_config["sample_size"]) * factor
    )
