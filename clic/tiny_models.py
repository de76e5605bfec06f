"""The seeded tiny models (``tiny``, ``tiny-inpaint``, ``tiny-v``): their configs, the CLIP tokenizer built from
open_clip's BPE vocabulary, building them, saving them as a diffusers folder, and their remembered description.

They are built from configs as diffusers' own test suite does (``tiny-v`` is ``tiny`` with a v-prediction
scheduler, as SD 2.x 768 models have). Numbers made with them are labelled ``tiny-random`` everywhere.
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
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .components import TINY_LABEL, TINY_PRESETS, ModelDescription, SDComponents
from .provenance import write_weights_marker

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

TINY_SEED = 0


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


def tiny_tokenizer() -> CLIPTokenizer:
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
        tokenizer=tiny_tokenizer(),
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


def describe_tiny(variant: str) -> ModelDescription:
    """A tiny preset's description, remembered per process and on disk (:func:`_tiny_description_file`): built
    once on this machine to describe it."""
    if variant not in _TINY_DESCRIPTIONS:
        recalled = _read_tiny_description(_tiny_description_file(variant), variant)
        if recalled is None:
            build_tiny(variant)  # remembers its description
        else:
            _TINY_DESCRIPTIONS[variant] = recalled
    return _TINY_DESCRIPTIONS[variant]
