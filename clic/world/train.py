"""Training the tiny world, stage by stage: ``autoencoder``, ``scorer``, ``unet``, and ``classifier`` (the
stage-4 gate's instrument) (``clic models train-world``).

A run is a function of its settings: step ``k`` reads scenes ``k * batch .. (k + 1) * batch - 1`` of the train
stream (:mod:`clic.world.data`), and every random draw of the loss comes from one ``torch.Generator`` whose state
is checkpointed with the model and the optimiser. A checkpoint is written atomically (temp file, then
``os.replace``) every ``checkpoint_minutes`` and at the end, so a run killed at any moment resumes from its last
checkpoint and continues exactly as the uninterrupted run would have (tests/clic/test_world.py checks it).

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
from .stage import CHECKPOINT_NAME, HISTORY_EVERY, RECORD_NAME, STAGES, Stage, StageResult, TrainSettings


def _stage(name: str) -> Stage:
    if name == "autoencoder":
        from .autoencoder import autoencoder_stage

        return autoencoder_stage()
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


@dataclass
class _Progress:
    """Where a run is: what a checkpoint holds beside the model, the optimiser and the generator."""

    step: int = 0
    seconds: float = 0.0
    loss: float = math.nan
    history: list = field(default_factory=list)  # [step, mean loss of the HISTORY_EVERY steps up to it]
    window: list = field(default_factory=list)  # the losses since the last history entry

    def record(self, loss: float) -> None:
        self.step += 1
        self.loss = loss
        self.window.append(loss)
        if len(self.window) == HISTORY_EVERY:
            self.history.append([self.step, round(sum(self.window) / len(self.window), 6)])
            self.window = []


def _resume(payload: dict | None, model: torch.nn.Module, optimizer, generator: torch.Generator) -> _Progress:
    """Load a checkpoint's states into the run's objects; a run without one starts at step 0."""
    if payload is None:
        return _Progress()
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    return _Progress(
        payload["step"], payload["seconds"], payload["loss"], payload.get("history", []), payload.get("window", [])
    )


def _checkpoint(
    settings: TrainSettings,
    architecture: str,
    model: torch.nn.Module,
    optimizer,
    generator: torch.Generator,
    state: _Progress,
) -> dict:
    """The checkpoint's payload (the format resumed runs read: keep its keys)."""
    return {
        "settings": asdict(settings),
        "architecture": architecture,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "step": state.step,
        "seconds": state.seconds,
        "loss": state.loss,
        "history": state.history,
        "window": state.window,
    }


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
    architecture = architecture_hash(model)
    payload = load_checkpoint(checkpoint_path, settings, architecture)
    state = _resume(payload, model, optimizer, generator)

    def save() -> None:
        _atomic_save(_checkpoint(settings, architecture, model, optimizer, generator, state), checkpoint_path)

    bar = tqdm(
        total=settings.steps,
        initial=state.step,
        desc=settings.stage,
        disable=not progress,
        file=sys.stderr,
        mininterval=30.0,
    )
    last_save = started = time.monotonic()
    while state.step < settings.steps:
        loss = stage.loss(model, state.step, generator, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.record(loss.detach().item())
        bar.update(1)
        bar.set_postfix(loss=f"{state.loss:.5f}", refresh=False)
        if time.monotonic() - last_save >= checkpoint_minutes * 60:
            state.seconds += time.monotonic() - started
            started = time.monotonic()
            save()
            last_save = time.monotonic()
            if log:
                log(f"step {state.step} loss {state.loss:.5f} seconds {state.seconds:.0f}")
    state.seconds += time.monotonic() - started
    bar.close()
    if payload is None or payload["step"] != state.step:
        save()
    return model, StageResult(settings.stage, state.step, round(state.seconds, 1), state.loss, history=state.history)


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
