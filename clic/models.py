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
afterwards follows the model (:mod:`clic.device`).
"""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Must precede any import of huggingface_hub (diffusers/transformers import it): otherwise a missing
# model retries against an unreachable hub for ~47 s. Users who do have a hub set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import TYPE_CHECKING, Any  # noqa: E402

import torch  # noqa: E402

from . import TINY_RANDOM  # noqa: E402
from .device import configure_tf32, resolve_device, resolve_dtype  # noqa: E402

# diffusers and transformers are imported where a model is built or loaded, not here: importing diffusers
# imports every model class it ships and torch._dynamo (seconds), which planning a run, preflight and
# the metric actor never need (tests/test_lazy_imports.py).
if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

TINY_PRESETS = ("tiny", "tiny-inpaint", "tiny-v")
TINY_SEED = 0
TINY_LABEL = TINY_RANDOM  # the label of the seeded tiny models (clic.TINY_RANDOM)
# The tiny architectures with weights trained on the synthetic scenes (clic.world, `clic models train-world`):
# shipped under clic/world/weights/, one folder per training stage; the SD 1.x layout and scheduler of `tiny`.
TINY_WORLD = "tiny-world"
TINY_WORLD_LABEL = "tiny-world: trained on the synthetic sets; not a real model"
TINY_WORLD_WEIGHTS = Path(__file__).parent / "world" / "weights"
TINY_WORLD_PARTS = {"vae": "autoencoder", "unet": "unet", "text_encoder": "text_encoder"}  # component: folder


class ModelNotFoundError(FileNotFoundError):
    """The requested weights are not on this machine; the message says how to get them."""


@dataclass
class SDComponents:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDIMScheduler
    model_id: str  # "tiny", a folder path or an HF id
    weights_hash: str  # identifies the weights (see :func:`weights_fingerprint`)
    resolution: int  # native image side in pixels
    label: str | None = None  # the weights label a folder's provenance marker gives (None: the model id)

    @property
    def is_tiny(self) -> bool:
        return self.model_id in TINY_PRESETS

    @property
    def weights_label(self) -> str:
        """What made the numbers: ``tiny-random``, the tiny-world label, a saved random build's label, or the
        model id."""
        if self.model_id == TINY_WORLD:
            return TINY_WORLD_LABEL
        return TINY_LABEL if self.is_tiny else (self.label or self.model_id)

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels == 9

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDComponents:
        """Move (and cast) the three networks in place, once; the scheduler's tables follow on use.

        In fp16 a VAE whose config says ``force_upcast`` (SD 1.x/2.x: their VAEs overflow in fp16) stays fp32;
        the loops cast at the VAE boundary.
        """
        # nn.Module.to: diffusers' own override warns about every cast of a whole model.
        for module in (self.text_encoder, self.unet):
            torch.nn.Module.to(module, device=device, dtype=dtype)
        _cast_inputs_at_the_boundary(self.unet)
        keep_fp32 = dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        torch.nn.Module.to(self.vae, device=device, dtype=torch.float32 if keep_fp32 else dtype)
        return self

    def freeze(self) -> SDComponents:
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
        return self


def _cast_to(dtype: torch.dtype, value):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _cast_inputs_at_the_boundary(unet: torch.nn.Module) -> None:
    """Float inputs of the UNet meet its dtype at its boundary: the loops keep latents in fp32 and every caller
    (each method's own loop included) can pass them as they are to a half-precision UNet."""
    if getattr(unet, "_clic_casts_inputs", False):
        return

    def cast(module, args, kwargs):
        dtype = module.dtype
        # the sample (first positional) only: a float timestep must not be rounded to bf16 (999 -> 1000)
        return (
            tuple(_cast_to(dtype, a) if i == 0 else a for i, a in enumerate(args)),
            {k: (_cast_to(dtype, v) if k in ("sample", "encoder_hidden_states") else v) for k, v in kwargs.items()},
        )

    unet.register_forward_pre_hook(cast, with_kwargs=True)
    unet._clic_casts_inputs = True


# --------------------------------------------------------------------------------------------- tiny
def tiny_unet_config(in_channels: int = 4) -> dict:
    return {
        "sample_size": 16,
        "in_channels": in_channels,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


TINY_VAE_CONFIG = {
    "block_out_channels": (32, 32, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
}

TINY_TEXT_CONFIG = {
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "hidden_size": 32,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}

# Stable Diffusion v1's scheduler configuration (scheduler/scheduler_config.json of SD 1.4).
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def ddim_scheduler(components: SDComponents) -> DDIMScheduler:
    """A new DDIM scheduler with the model's noise schedule and prediction type: a checkpoint's own scheduler
    (e.g. SD 1.5's PNDM) becomes DDIM, which transfer, generation and matching step with."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(components.scheduler.config)


def build_clip_tokenizer(directory: str | Path, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Write vocab.json + merges.txt from open_clip's BPE file into ``directory`` and load a CLIPTokenizer.

    Same vocabulary and ids as openai/clip-vit-large-patch14's tokenizer (SD 1.x): byte symbols,
    their ``</w>`` forms, the merges, then ``<|startoftext|>`` and ``<|endoftext|>`` (49406, 49407).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,  # SD 2.x (OpenCLIP) pads with "!"
                "do_lower_case": True,
            }
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(directory)
    tokenizer.model_max_length = 77
    return tokenizer


def _tiny_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    cache = Path(os.environ.get("CLIC_CACHE", Path.home() / ".cache" / "clic")) / "tiny-tokenizer"
    try:
        if (cache / "vocab.json").exists() and (cache / "merges.txt").exists():
            tokenizer = CLIPTokenizer.from_pretrained(cache)
            tokenizer.model_max_length = 77
            return tokenizer
    except Exception:  # damaged (the tokenizers library raises a bare Exception for a broken vocab): rebuilt below
        pass
    if cache.is_dir():  # incomplete or damaged (a writer killed half-way, before writes were atomic): rebuilt
        shutil.rmtree(cache, ignore_errors=True)
    # Built beside the cache and renamed into place: a concurrent reader never sees half-written files.
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".tiny-tokenizer-") as building:
            tokenizer = build_clip_tokenizer(building)
            try:
                os.replace(building, cache)
            except OSError:  # another process put its (identical) copy there first
                pass
            else:
                Path(building).mkdir()  # for TemporaryDirectory's cleanup
            return tokenizer
    except OSError as err:  # CLIC_CACHE is a file, read-only or full: built in a temporary folder, not cached
        _note_cache_unusable(cache.parent, err)
        with tempfile.TemporaryDirectory(prefix="clic-tiny-tokenizer-") as building:
            return build_clip_tokenizer(building)


def _note_cache_unusable(folder: Path, err: OSError) -> None:
    if _CACHE_NOTED:
        return
    _CACHE_NOTED.append(folder)
    reason = "read-only file system" if err.errno == errno.EROFS else (err.strerror or type(err).__name__)
    print(
        f"note: CLIC_CACHE={folder}: cannot be written ({reason}); the tiny models' tokenizer is built in a "
        f"temporary folder each time (set CLIC_CACHE to a writable folder to keep it)",
        file=sys.stderr,
    )


_CACHE_NOTED: list[Path] = []


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


def build_tiny(variant: str = "tiny") -> SDComponents:
    """Seeded tiny SD components (64 px images, 16×16 latents). ``tiny-inpaint`` has a 9-channel UNet;
    ``tiny-v`` is ``tiny``'s weights with a ``v_prediction`` scheduler (tests cover both prediction types)."""
    if variant not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {variant!r}; known: {', '.join(TINY_PRESETS)}")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**tiny_unet_config(9 if variant == "tiny-inpaint" else 4))
        torch.manual_seed(TINY_SEED)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        torch.manual_seed(TINY_SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
    finally:
        torch.random.set_rng_state(generator_state)
    components = SDComponents(
        tokenizer=_tiny_tokenizer(),
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler=DDIMScheduler(
            **{**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction" if variant == "tiny-v" else "epsilon"}
        ),
        model_id=variant,
        weights_hash="",
        resolution=64,
    )
    components.weights_hash = state_hash(components)
    _remember_tiny_description(variant, components)
    return components.freeze()


def save_tiny(directory: str | Path, variant: str = "tiny") -> Path:
    """Write the tiny preset as a stock diffusers StableDiffusion(Inpaint)Pipeline folder."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    components = build_tiny(variant)
    pipeline_class = StableDiffusionInpaintPipeline if variant == "tiny-inpaint" else StableDiffusionPipeline
    pipeline = pipeline_class(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    write_weights_marker(directory, TINY_LABEL, f"clic models save-tiny --variant {variant}")
    return Path(directory)


# ---------------------------------------------------------------------------------------- provenance
WEIGHTS_MARKER = "clic_weights.json"  # beside model_index.json: what the weights of a folder this project wrote are


def _random_registry() -> Path:
    return Path(os.environ.get("CLIC_CACHE", Path.home() / ".cache" / "clic")) / "random-weights"


def write_weights_marker(directory: str | Path, label: str, made_by: str) -> None:
    """Mark a folder of random weights as such, so every row, table and banner made with it says so; its
    fingerprint is also remembered on this machine, so a copy without the marker is still recognised."""
    directory = Path(directory)
    record = {"weights_label": label, "random_weights": True, "made_by": made_by}
    (directory / WEIGHTS_MARKER).write_text(json.dumps(record, indent=1))
    try:
        registry = _random_registry()
        registry.mkdir(parents=True, exist_ok=True)
        (registry / f"{weights_fingerprint(directory)}.json").write_text(json.dumps(record))
    except OSError:  # a read-only cache: the marker in the folder still labels it
        pass


def folder_weights_label(folder: Path, fingerprint: str, model: str) -> str:
    """A folder's weights label: its marker's, else a known random build's (by fingerprint), else the model id."""
    for path in (folder / WEIGHTS_MARKER, _random_registry() / f"{fingerprint}.json"):
        try:
            label = json.loads(path.read_text()).get("weights_label")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(label, str) and label:
            return label
    return model


def _tiny_world_folders() -> dict[str, Path]:
    """The shipped stage folders of tiny-world; a missing stage is one error naming the command that trains it."""
    folders = {component: TINY_WORLD_WEIGHTS / folder for component, folder in TINY_WORLD_PARTS.items()}
    missing = [folder for folder in folders.values() if not (folder / "config.json").is_file()]
    if missing:
        names = ", ".join(folder.name for folder in missing)
        raise ModelNotFoundError(
            f"{TINY_WORLD}: the trained weights of {names} are not shipped yet (looked in {TINY_WORLD_WEIGHTS}); "
            f"train them with `clic models train-world --stage STAGE --out {TINY_WORLD_WEIGHTS}` (issue 29)"
        )
    return folders


def _tiny_world_fingerprint(folders: dict[str, Path]) -> str:
    """Identity of the shipped weights (the same in describe_model and when loaded, as workers check)."""
    return hashlib.sha256("".join(weights_fingerprint(folders[c]) for c in sorted(folders)).encode()).hexdigest()[:16]


def build_tiny_world() -> SDComponents:
    """The tiny architectures with the weights trained on the synthetic world: SD 1.x-shaped (ε-prediction, SD's
    scheduler config, CLIP tokenizer), so every method runs on it unchanged."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    folders = _tiny_world_folders()
    vae = AutoencoderKL.from_pretrained(folders["vae"])
    unet = UNet2DConditionModel.from_pretrained(folders["unet"])
    components = SDComponents(
        tokenizer=_tiny_tokenizer(),
        text_encoder=CLIPTextModel.from_pretrained(folders["text_encoder"]),
        unet=unet,
        vae=vae,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        model_id=TINY_WORLD,
        weights_hash=_tiny_world_fingerprint(folders),
        resolution=int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1),
    )
    return components.freeze()


# ------------------------------------------------------------------------------------------ loading
def state_hash(components: SDComponents) -> str:
    """sha256 of every parameter's bytes: exact, used for the (small) tiny models."""
    digest = hashlib.sha256()
    for module in (components.unet, components.vae, components.text_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if components.scheduler.config.prediction_type != "epsilon":  # tiny-v: same weights, other target
        digest.update(components.scheduler.config.prediction_type.encode())
    return digest.hexdigest()[:16]


def weights_fingerprint(folder: Path) -> str:
    """A cheap identity of a checkpoint folder: name, size and the first/last MiB of each weights file.

    Hashing a 4 GB checkpoint on every run costs ~10 s; the header of a safetensors file holds every
    tensor's name, shape and offset, and the tail catches a retrained file of the same layout.
    """
    digest = hashlib.sha256()
    suffixes = {".safetensors", ".bin", ".ckpt", ".pt"}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in suffixes or p.name.endswith("config.json")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


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


@dataclass(frozen=True)
class ModelDescription:
    model_id: str
    weights_hash: str
    weights_label: str  # "tiny-random" or the model id
    resolution: int  # native image side


_TINY_DESCRIPTIONS: dict[str, ModelDescription] = {}


@functools.cache
def _tiny_description_key(variant: str) -> str:
    """Everything a tiny preset's weights follow from: the configs and seed in this module and the
    torch/diffusers/transformers versions that build them (fixed for the life of a process)."""
    from importlib.metadata import version

    spec = {
        "variant": variant,
        "seed": TINY_SEED,
        "unet": tiny_unet_config(9 if variant == "tiny-inpaint" else 4),
        "vae": TINY_VAE_CONFIG,
        "text_encoder": TINY_TEXT_CONFIG,
        "scheduler": SD_SCHEDULER_CONFIG,
        "versions": {name: version(name) for name in ("torch", "diffusers", "transformers")},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tiny_description_file(variant: str) -> Path:
    """Where the description of a tiny preset is remembered, under its key: a driver plans a tiny run without
    importing diffusers or building the model, and a change of configs or versions is a new file, never a stale
    hash. Workers check the hash of the model they build against the plan's."""
    cache = Path(os.environ.get("CLIC_CACHE", Path.home() / ".cache" / "clic"))
    return cache / "tiny-descriptions" / f"{variant}-{_tiny_description_key(variant)}.json"


def _remember_tiny_description(variant: str, components: SDComponents) -> None:
    description = ModelDescription(variant, components.weights_hash, TINY_LABEL, components.resolution)
    _TINY_DESCRIPTIONS[variant] = description
    path = _tiny_description_file(variant)
    if _read_tiny_description(path, variant) == description:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(description.__dict__))
        temp.replace(path)  # atomic: concurrent writers write the same content
    except OSError:  # a read-only home: the next process builds the model to describe it, as before
        pass


def _read_tiny_description(path: Path, variant: str) -> ModelDescription | None:
    try:
        fields = json.loads(path.read_text())
        description = ModelDescription(**fields)
    except (OSError, ValueError, TypeError):  # not written yet, or damaged: rebuilt and rewritten
        return None
    return description if description.model_id == variant and description.weights_hash else None


def describe_model(model: str) -> ModelDescription:
    """Identity and native resolution of a model without loading a real checkpoint's weights.

    For a folder or cached HF id this reads only configs and file fingerprints, so a driver can plan a
    run on a machine without a GPU (or the memory for SD) in a fraction of a second.
    """
    if model in TINY_PRESETS:  # built from code: remembered per process and on disk (_tiny_description_file)
        if model not in _TINY_DESCRIPTIONS:
            recalled = _read_tiny_description(_tiny_description_file(model), model)
            if recalled is None:
                build_tiny(model)  # remembers its description
            else:
                _TINY_DESCRIPTIONS[model] = recalled
        return _TINY_DESCRIPTIONS[model]
    if model == TINY_WORLD:  # shipped files: fingerprinted like any folder, without loading them
        folders = _tiny_world_folders()
        factor = 2 ** (len(json.loads((folders["vae"] / "config.json").read_text())["block_out_channels"]) - 1)
        sample_size = json.loads((folders["unet"] / "config.json").read_text())["sample_size"]
        return ModelDescription(
            TINY_WORLD, _tiny_world_fingerprint(folders), TINY_WORLD_LABEL, int(sample_size) * factor
        )
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
