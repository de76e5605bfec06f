"""Training the tiny world, stage by stage: ``autoencoder``, ``scorer``, ``unet``, and ``classifier`` (the
stage-4 gate's instrument) (``clic models train-world``).

A run is a function of its settings: step ``k`` reads scenes ``k * batch .. (k + 1) * batch - 1`` of the train
stream (:mod:`clic.world.data`), and every random draw of the loss comes from one ``torch.Generator`` whose state
is checkpointed with the model and the optimiser. A checkpoint is written atomically (temp file, then
``os.replace``) every ``checkpoint_minutes`` and at the end, so a run killed at any moment resumes from its last
checkpoint and continues exactly as the uninterrupted run would have (tests/test_world.py checks it).

At the end the stage's weights are written as safetensors (diffusers layout for the VAE and the UNet) beside a
JSON record: sha256 of the weights file, the command, steps, seconds of training and the stage's gate figure on
held-out scenes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..hashing import file_sha256
from .data import WORLD_SEED, render_batch

STAGES: tuple[str, ...] = ("autoencoder", "scorer", "unet", "classifier")
CHECKPOINT_NAME = "checkpoint.pt"
RECORD_NAME = "train-{stage}.json"
AUTOENCODER_GATE_PSNR = 25.0  # dB, held-out reconstruction (issue 29, stage 2)
SCORER_GATE_TOP1 = 0.80  # held-out text->image top-1 among 100 captions (issue 29, stage 3)
EVAL_SCENES = 256  # held-out scenes of the autoencoder gate, and train scenes of the latent scale
HISTORY_EVERY = 25  # steps per entry of the loss history kept in checkpoints and records


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run's numbers follow from; a checkpoint made with other settings is refused on resume."""

    stage: str
    steps: int
    batch: int = 32
    lr: float = 5e-4
    seed: int = WORLD_SEED
    kl_weight: float = 1e-6  # autoencoder: SD's first-stage KL weight (LDM configs, kl-f8: kl_weight 1e-6)


@dataclass
class StageResult:
    stage: str
    steps: int
    seconds: float
    final_loss: float
    gate: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # [step, mean loss of the HISTORY_EVERY steps up to it]


# --------------------------------------------------------------------------------------------- models
def world_vae_config() -> dict:
    """The tiny preset's VAE (clic.models.TINY_VAE_CONFIG: same channels, blocks, 4 latent channels, 4x down) with
    8 GroupNorm groups instead of 32. With 32 groups on 32 channels every norm is an instance norm that removes each
    channel's spatial mean, which can carry no absolute colour (a scene's tint); groups of 4 channels, as SD's VAE
    has (32 groups on 128 channels), keep colour as differences between channels. This is the architecture's
    reason, not a measured gain: early in training both reconstruct in grey, at the same pace (32 held-out scenes,
    batch 8: 20.7 dB at step 380 with 32 groups, 21.0 dB at step 438 with 8; issue 29 report)."""
    from ..models import TINY_VAE_CONFIG

    return {**TINY_VAE_CONFIG, "norm_num_groups": 8}


def build_autoencoder(seed: int) -> torch.nn.Module:
    """The world's VAE architecture (:func:`world_vae_config`), freshly initialised from ``seed``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**world_vae_config())


def autoencoder_loss(
    vae: torch.nn.Module, images: torch.Tensor, generator: torch.Generator, kl_weight: float
) -> torch.Tensor:
    """Reconstruction MSE of a posterior sample (what PSNR measures) plus SD's tiny KL term."""
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=generator)
    reconstruction = vae.decode(latents).sample
    return torch.nn.functional.mse_loss(reconstruction, images) + kl_weight * posterior.kl().mean() / images[0].numel()


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured on the [0, 1] scale: 10 log10(1 / MSE)."""
    mse = (((reference - estimate.clamp(-1, 1)) / 2) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_autoencoder(vae: torch.nn.Module, count: int | None = None, seed: int = WORLD_SEED) -> dict:
    """Held-out reconstruction PSNR through the posterior mean (mean over ``count`` scenes, and the worst)."""
    count = count or EVAL_SCENES
    was_training = vae.training
    vae.eval()
    values = []
    for start in range(0, count, 32):
        images, _ = render_batch(start, min(32, count - start), "heldout", seed)
        images = torch.from_numpy(images)
        values.append(psnr(images, vae.decode(vae.encode(images).latent_dist.mode()).sample))
    vae.train(was_training)
    per_image = torch.cat(values)
    return {
        "heldout_psnr_db": round(float(per_image.mean()), 3),
        "heldout_psnr_min_db": round(float(per_image.min()), 3),
        "heldout_scenes": count,
        "gate_psnr_db": AUTOENCODER_GATE_PSNR,
        "passed": bool(per_image.mean() >= AUTOENCODER_GATE_PSNR),
    }


@torch.no_grad()
def latent_scaling_factor(vae: torch.nn.Module, count: int | None = None, seed: int = WORLD_SEED) -> float:
    """1 / std of the posterior means over ``count`` train scenes: SD's rule for ``scaling_factor`` (unit-variance
    latents for the diffusion model; LDM's ``scale_by_std``), stored in the exported VAE config."""
    count = count or EVAL_SCENES
    was_training = vae.training
    vae.eval()
    batches = (
        torch.from_numpy(render_batch(start, min(32, count - start), "train", seed)[0]) for start in range(0, count, 32)
    )
    means = [vae.encode(images).latent_dist.mean for images in batches]
    vae.train(was_training)
    return round(1.0 / float(torch.cat(means).std()), 5)


def _save_autoencoder(vae: torch.nn.Module, folder: Path) -> Path:
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae))
    return _save_diffusers(vae, folder)


@dataclass
class Stage:
    build: Callable[[TrainSettings], torch.nn.Module]
    loss: Callable[[torch.nn.Module, int, torch.Generator, TrainSettings], torch.Tensor]
    evaluate: Callable[[torch.nn.Module, TrainSettings], dict]
    save: Callable[[torch.nn.Module, Path], Path]


def _autoencoder_step_loss(
    vae: torch.nn.Module, step: int, generator: torch.Generator, settings: TrainSettings
) -> torch.Tensor:
    images, _ = render_batch(step * settings.batch, settings.batch, "train", settings.seed)
    return autoencoder_loss(vae, torch.from_numpy(images), generator, settings.kl_weight)


def _save_diffusers(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder / "diffusion_pytorch_model.safetensors"


def _stage(name: str) -> Stage:
    if name == "autoencoder":
        return Stage(
            build=lambda s: build_autoencoder(s.seed),
            loss=_autoencoder_step_loss,
            evaluate=lambda model, s: evaluate_autoencoder(model, seed=s.seed),
            save=_save_autoencoder,
        )
    if name == "scorer":
        from .scorer import scorer_stage

        return scorer_stage()
    if name == "unet":
        from .diffusion import unet_stage

        return unet_stage()
    if name == "classifier":
        from .classifier import classifier_stage

        return classifier_stage()
    raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")


# ----------------------------------------------------------------------------------------- checkpoints
def _atomic_save(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, temp)
    os.replace(temp, path)


def architecture_hash(model: torch.nn.Module) -> str:
    """Identity of a model's layer structure (its repr names every layer and its sizes, norm groups included)."""
    return hashlib.sha256(repr(model).encode()).hexdigest()[:16]


def load_checkpoint(path: Path, settings: TrainSettings, architecture: str | None = None) -> dict | None:
    """The checkpoint at ``path`` if there is one; a checkpoint of other settings (steps aside) is an error."""
    if not path.exists():
        return None
    payload = torch.load(path, weights_only=False)
    saved_architecture = payload.get("architecture")  # absent in the first checkpoints of this format
    if architecture is not None and saved_architecture is not None and saved_architecture != architecture:
        raise ValueError(
            f"{path}: checkpoint is of another architecture than this code builds; use another --checkpoint-dir"
        )
    saved = dict(payload["settings"])
    if {k: v for k, v in saved.items() if k != "steps"} != {k: v for k, v in asdict(settings).items() if k != "steps"}:
        raise ValueError(
            f"{path}: checkpoint was made with other settings {saved}; "
            "use another --checkpoint-dir or the same settings"
        )
    return payload


def train_stage(
    settings: TrainSettings,
    checkpoint_dir: Path,
    *,
    checkpoint_minutes: float = 5.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, StageResult]:
    """Train ``settings.stage`` up to ``settings.steps``, resuming from ``checkpoint_dir`` if it has a checkpoint."""
    from tqdm.auto import tqdm

    stage = _stage(settings.stage)
    torch.manual_seed(settings.seed)
    model = stage.build(settings)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME
    step, seconds, last_loss, history, window = 0, 0.0, math.nan, [], []
    architecture = architecture_hash(model)
    payload = load_checkpoint(checkpoint_path, settings, architecture)
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        generator.set_state(payload["generator"])
        step, seconds, last_loss = payload["step"], payload["seconds"], payload["loss"]
        history, window = payload.get("history", []), payload.get("window", [])

    def save() -> None:
        _atomic_save(
            {
                "settings": asdict(settings),
                "architecture": architecture,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "step": step,
                "seconds": seconds,
                "loss": last_loss,
                "history": history,
                "window": window,
            },
            checkpoint_path,
        )

    bar = tqdm(
        total=settings.steps, initial=step, desc=settings.stage, disable=not progress, file=sys.stderr, mininterval=30.0
    )
    last_save = time.monotonic()
    started = time.monotonic()
    while step < settings.steps:
        loss = stage.loss(model, step, generator, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        last_loss = loss.detach().item()
        window.append(last_loss)
        if len(window) == HISTORY_EVERY:
            history.append([step, round(sum(window) / len(window), 6)])
            window = []
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.5f}", refresh=False)
        if time.monotonic() - last_save >= checkpoint_minutes * 60:
            seconds += time.monotonic() - started
            started = time.monotonic()
            save()
            last_save = time.monotonic()
            if log:
                log(f"step {step} loss {last_loss:.5f} seconds {seconds:.0f}")
    seconds += time.monotonic() - started
    bar.close()
    if payload is None or payload["step"] != step:
        save()
    return model, StageResult(settings.stage, step, round(seconds, 1), last_loss, history=history)


sha256_file = file_sha256  # the record's "sha256" (clic.hashing: one copy of the rule)


def export_stage(model: torch.nn.Module, result: StageResult, settings: TrainSettings, out_dir: Path) -> Path:
    """Evaluate the stage's gate on held-out scenes and write its weights and JSON record under ``out_dir``."""
    stage = _stage(settings.stage)
    result.gate = stage.evaluate(model, settings)
    weights = stage.save(model, Path(out_dir) / settings.stage)
    record = {
        "stage": settings.stage,
        "weights": weights.relative_to(out_dir).as_posix(),
        "sha256": sha256_file(weights),
        "bytes": weights.stat().st_size,
        "command": reproducing_command(settings, result.steps),
        "settings": asdict(replace(settings, steps=result.steps)),
        "steps": result.steps,
        "seconds": result.seconds,
        "final_loss": result.final_loss,
        "gate": result.gate,
        "loss_history": result.history,
        "versions": {name: _version(name) for name in ("torch", "diffusers", "open_clip_torch")},
    }
    path = Path(out_dir) / RECORD_NAME.format(stage=settings.stage)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def reproducing_command(settings: TrainSettings, steps: int) -> str:
    """The command that retrains these weights from scratch (a resumed or exported run gives the same weights)."""
    return (
        f"clic models train-world --stage {settings.stage} --steps {steps} --batch {settings.batch} "
        f"--lr {settings.lr:g} --seed {settings.seed} --checkpoint-dir CHECKPOINTS --out clic/world/weights"
    )
