"""Single-file Stable Diffusion checkpoints (``v1-5-pruned-emaonly.safetensors``, ``*.ckpt``), offline.

Users keep models as one file in the original (CompVis LDM / A1111 / civitai) layout. diffusers reads it with
``from_single_file``, but it fetches the matching configs (and tokenizer) from the hub; here the configs are the
project's own (:mod:`clic.architectures`), written once into a config-only diffusers folder under
``$CLIC_CACHE/single-file-configs/`` and handed to ``from_single_file(config=...)``, so nothing is downloaded.

* :func:`detect_architecture` reads only the file's tensor names and shapes (the safetensors header; a ``.ckpt``
  is unpickled with ``weights_only``) and asks diffusers' own ``infer_diffusers_model_type`` what it is:
  SD 1.x → ``sd15``, SD 2.x → ``sd21`` (768-v, as diffusers assumes without an original config), a file of the
  tiny test model's shapes → ``tiny``. Anything else (SDXL, SD 3, Flux, inpainting, ...) is refused in one line
  naming what is supported.
* :func:`load_single_file` returns :class:`~clic.components.SDComponents`; :func:`convert` writes the diffusers
  folder once (``clic models convert FILE --arch sd15 OUT/``).
* :func:`save_single_file` writes components in the original layout (CLIP text encoders: SD 1.x and the tiny
  model), the inverse of diffusers' converters, key names as diffusers'
  ``scripts/convert_diffusers_to_original_stable_diffusion.py`` writes them; tests make checkpoints with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .architectures import ARCHITECTURES, Architecture
from .components import ModelNotFoundError, SDComponents
from .tiny_models import SD_SCHEDULER_CONFIG, TINY_TEXT_CONFIG, TINY_VAE_CONFIG, tiny_unet_config

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

# The tiny preset's configs as an architecture, so a tiny model written as a single file loads like SD 1.5.
TINY_ARCHITECTURE = Architecture(
    name="tiny",
    description="the seeded tiny test model (64 px, SD 1.x layout)",
    unet=tiny_unet_config(),
    vae=TINY_VAE_CONFIG,
    text_encoder=TINY_TEXT_CONFIG,
    scheduler=dict(SD_SCHEDULER_CONFIG),
    pad_token="<|endoftext|>",
)

SINGLE_FILE_ARCHITECTURES: dict[str, Architecture] = {
    "sd15": ARCHITECTURES["sd15"],
    "sd21": ARCHITECTURES["sd21"],
    "tiny": TINY_ARCHITECTURE,
}
# diffusers' model type (single_file_utils.infer_diffusers_model_type) -> the architectures it may be
SUPPORTED_MODEL_TYPES = {"v1": ("sd15", "tiny"), "v2": ("sd21",)}
SUPPORTED = "SD 1.x (--arch sd15), SD 2.x 768-v (--arch sd21)"

_CROSS_ATTENTION_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_CLIP_PREFIX = "cond_stage_model.transformer.text_model."


class UnsupportedModelError(ModelNotFoundError):
    """A model of an architecture the project cannot run (SDXL, SD 3, ...): caught wherever a missing model is."""


def is_single_file(model: str | os.PathLike[str]) -> bool:
    """``model`` names a checkpoint file (by its suffix) rather than a folder, a preset or an HF id."""
    return str(model).lower().endswith(SINGLE_FILE_SUFFIXES)


class _Shape:
    """A tensor's shape without its data, for diffusers' type inference (it reads ``key in ckpt`` and ``.shape``)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = torch.Size(shape)


def _tensor_shapes(path: Path) -> dict[str, _Shape]:
    """Every tensor name and shape of a checkpoint; a safetensors file is read by its header only."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {key: _Shape(tuple(handle.get_slice(key).get_shape())) for key in handle.keys()}
        state = torch.load(str(path), map_location="meta", weights_only=True, mmap=True)
    except Exception as err:  # a truncated file, a pickle with code in it, not a checkpoint at all
        raise ModelNotFoundError(
            f"{path}: cannot read the checkpoint ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k: _Shape(tuple(v.shape)) for k, v in state.items() if isinstance(v, torch.Tensor)}


def detect_architecture(path: str | os.PathLike[str], arch: str | None = None) -> Architecture:
    """The architecture of a single-file checkpoint (or check that ``arch`` fits it); one-line refusal otherwise."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such checkpoint file")
    shapes = _tensor_shapes(path)
    if arch is not None and arch not in SINGLE_FILE_ARCHITECTURES:
        raise UnsupportedModelError(f"--arch {arch}: unknown; supported: {', '.join(SINGLE_FILE_ARCHITECTURES)}")
    model_type = infer_diffusers_model_type(shapes)  # its fallback is "v1": a v1 file must have an SD UNet
    if model_type == "v1" and not any(k.startswith(_UNET_PREFIX) for k in shapes):
        model_type = "not a Stable Diffusion checkpoint: no model.diffusion_model.* UNet weights"
    candidates = SUPPORTED_MODEL_TYPES.get(model_type)
    if candidates is None:
        raise UnsupportedModelError(
            f"{path}: unsupported architecture ({_describe_type(model_type)}); "
            f"supported single-file checkpoints: {SUPPORTED}"
        )
    width = shapes[_CROSS_ATTENTION_KEY].shape[-1] if _CROSS_ATTENTION_KEY in shapes else None
    fitting = [name for name in candidates if SINGLE_FILE_ARCHITECTURES[name].unet["cross_attention_dim"] == width]
    if arch is not None:
        if arch not in fitting:
            raise UnsupportedModelError(
                f"{path}: not a {arch} checkpoint (cross-attention width {width}, "
                f"diffusers type {model_type}); supported: {SUPPORTED}"
            )
        return SINGLE_FILE_ARCHITECTURES[arch]
    if not fitting:
        raise UnsupportedModelError(
            f"{path}: unsupported architecture (diffusers type {model_type}, cross-attention "
            f"width {width}); supported single-file checkpoints: {SUPPORTED}"
        )
    return SINGLE_FILE_ARCHITECTURES[fitting[0]]


def _describe_type(model_type: str) -> str:
    names = {
        "xl_base": "SDXL base",
        "xl_refiner": "SDXL refiner",
        "xl_inpaint": "SDXL inpainting",
        "playground-v2-5": "Playground v2.5 (SDXL)",
        "inpainting": "SD 1.x inpainting",
        "inpainting_v2": "SD 2.x inpainting",
        "upscale": "SD x4 upscaler",
    }
    return names.get(model_type, model_type)


def config_folder(arch: Architecture) -> Path:
    """A config-only diffusers folder for ``arch`` (model_index.json, component configs, tokenizer), written once
    into ``$CLIC_CACHE/single-file-configs/`` under a hash of the configs: ``from_single_file(config=...)`` reads
    it instead of the hub."""
    from .tiny_models import build_clip_tokenizer

    spec = {
        "unet": arch.unet,
        "vae": arch.vae,
        "text_encoder": arch.text_encoder,
        "scheduler": arch.scheduler,
        "pad": arch.pad_token,
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("CLIC_CACHE", Path.home() / ".cache" / "clic"))
    folder = cache / "single-file-configs" / f"{arch.name}-{key}"
    if (folder / "model_index.json").exists():
        return folder
    temp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    from transformers import CLIPTextConfig

    for name, class_name, config in (
        ("unet", "UNet2DConditionModel", arch.unet),
        ("vae", "AutoencoderKL", arch.vae),
        ("scheduler", "DDIMScheduler", arch.scheduler),
    ):
        (temp / name).mkdir(parents=True, exist_ok=True)
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        (temp / name / file).write_text(json.dumps({"_class_name": class_name, **config}, default=list))
    CLIPTextConfig(**arch.text_encoder).save_pretrained(temp / "text_encoder")
    build_clip_tokenizer(temp / "tokenizer", pad_token=arch.pad_token)
    (temp / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        )
    )
    try:
        temp.rename(folder)
    except OSError:  # another process wrote it first: same content
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
    return folder


def file_fingerprint(path: Path, arch: str) -> str:
    """A cheap identity of a checkpoint file: its architecture, size and first/last MiB (as for a folder)."""
    digest = hashlib.sha256(f"{arch}:{path.stat().st_size}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if path.stat().st_size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def _pipeline(path: Path, arch: Architecture, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    config = str(config_folder(arch))
    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # one bar per component in every worker's log says nothing
    try:
        return StableDiffusionPipeline.from_single_file(
            str(path),
            config=config,
            local_files_only=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **({} if dtype == torch.float32 else {"torch_dtype": dtype}),
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = " ".join(str(err).split())[:300] or type(err).__name__
        raise ModelNotFoundError(f"{path}: cannot load as {arch.name}: {first}") from None
    finally:
        if bars:
            diffusers_logging.enable_progress_bar()


def load_single_file(
    path: str | os.PathLike[str], *, arch: str | None = None, device: Any = "cpu", dtype: Any = torch.float32
) -> SDComponents:
    """SD components from a single-file checkpoint, offline, on ``device`` in ``dtype``."""
    from .device import resolve_device, resolve_dtype

    device, dtype = resolve_device(device), resolve_dtype(dtype)
    path = Path(path).expanduser().resolve()
    architecture = detect_architecture(path, arch)
    pipeline = _pipeline(path, architecture, dtype)
    vae = torch.nn.Module.to(pipeline.vae, dtype=torch.float32)  # as from a folder: SDComponents.to casts it
    components = SDComponents(
        tokenizer=pipeline.tokenizer,
        text_encoder=pipeline.text_encoder,
        unet=pipeline.unet,
        vae=vae,
        scheduler=pipeline.scheduler,
        model_id=str(path),
        weights_hash=file_fingerprint(path, architecture.name),
        resolution=architecture.resolution,
    )
    return components.to(device, dtype).freeze()


def convert(path: str | os.PathLike[str], out: str | os.PathLike[str], arch: str | None = None) -> Path:
    """Write a single-file checkpoint as a diffusers folder (``save_pretrained``), once."""
    path = Path(path).expanduser().resolve()
    pipeline = _pipeline(path, detect_architecture(path, arch), torch.float32)
    pipeline.save_pretrained(out)
    return Path(out)


# ------------------------------------------------------------------------------ writing the original layout
def _unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> LDM ``model.diffusion_model.*`` keys, for any number of levels and layers per block
    (the inverse of diffusers' ``convert_ldm_unet_checkpoint``)."""
    per_level = int(config.get("layers_per_block", 2)) + 1
    up_has_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
    }
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    for i in range(len(config["down_block_types"])):
        for j in range(per_level - 1):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * per_level + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * per_level + j}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * per_level}.0.op."
    for i in range(len(config["up_block_types"])):
        for j in range(per_level):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * per_level + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * per_level + j}.1."
        prefixes[f"up_blocks.{i}.upsamplers.0."] = (
            f"output_blocks.{i * per_level + per_level - 1}.{2 if up_has_attention[i] else 1}."
        )
    resnet_parts = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "time_emb_proj": "emb_layers.1",
        "conv_shortcut": "skip_connection",
    }
    out = {}
    for key, value in state.items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
        if prefix is None:
            raise ValueError(f"UNet weight {key} has no place in the original layout")
        rest = key[len(prefix) :]
        if ".resnets." in prefix:
            head, _, tail = rest.partition(".")
            rest = f"{resnet_parts.get(head, head)}.{tail}"
        out[_UNET_PREFIX + prefixes[prefix] + rest] = value
    return out


def _vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers VAE keys -> LDM ``first_stage_model.*`` keys (the inverse of ``convert_ldm_vae_checkpoint``:
    decoder levels numbered in reverse, mid attention as 1×1 convolutions)."""
    levels = len(config["up_block_types"])
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut", "nin_shortcut")
        for i in range(levels):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        for j in range(2):
            new = new.replace(f"mid_block.resnets.{j}.", f"mid.block_{j + 1}.")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for old, ldm in attention.items():
                new = new.replace(f"mid.attn_1.{old}", f"mid.attn_1.{ldm}")
            if new.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]  # LDM's attention projections are 1×1 convolutions
        out[_VAE_PREFIX + new] = value
    return out


def save_single_file(components: SDComponents, path: str | os.PathLike[str]) -> Path:
    """Write UNet, VAE and CLIP text encoder as one safetensors file in the original SD 1.x layout."""
    from safetensors.torch import save_file

    if components.text_encoder.config.hidden_act != "quick_gelu" and components.text_encoder.config.hidden_size > 768:
        raise ValueError(
            "save_single_file writes the SD 1.x layout (CLIP text encoder); an OpenCLIP (SD 2.x) "
            "text encoder is not supported"
        )
    state = _unet_to_ldm(components.unet.state_dict(), dict(components.unet.config))
    state.update(_vae_to_ldm(components.vae.state_dict(), dict(components.vae.config)))
    for key, value in components.text_encoder.state_dict().items():
        state[_CLIP_PREFIX + key.removeprefix("text_model.")] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
    return path
