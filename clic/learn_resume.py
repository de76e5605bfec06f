"""Resumable learning: a snapshot every ``checkpoint_every`` steps (the concept so far, the optimiser, every
random state), written atomically, and the newest one learned from the same inputs found again.

Part of the shared learning loop (:mod:`clic.learn`); :func:`concept_snapshot` is also what a finished learn saves.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .concept import LearnedConcept
from .learn_config import LearnConfig
from .learn_inputs import ConceptSource
from .learn_step import TrainState
from .models import components_architecture

RESUME_FILE = "resume.pt"


def random_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random state the loop draws from: the batch generator, torch's global CPU (and CUDA) state, Python's."""
    states = {"generator": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(generator: torch.Generator, states: Mapping[str, Any]) -> None:
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def resume_fingerprint(
    config: LearnConfig, source: ConceptSource, method: str, preset: str, seed: int, token_names: Sequence[str]
) -> str:
    """What a snapshot must have been learned from to be resumed: the settings, seed, tokens and source pixels
    (a folder reused for another learn starts afresh instead of resuming a stranger's state)."""
    import hashlib
    import json

    digest = hashlib.sha256(
        json.dumps(
            {"config": config.to_dict(), "method": method, "preset": preset, "seed": seed, "tokens": list(token_names)},
            sort_keys=True,
            default=str,
        ).encode()
    )
    for tensor in (source.images, source.image_masks):
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_checkpoint(out_dir: Path, step: int, concept: LearnedConcept, resume: Mapping[str, Any]) -> Path:
    """``out_dir/checkpoints/step-N/``: the concept so far plus ``resume.pt`` (trained tensors, optimizer, random
    states, loss log), written under a temporary name and renamed, so a kill leaves the previous one whole; only
    the newest keeps its ``resume.pt`` (with the optimizer's moments it is several times the trained weights)."""
    import os
    import shutil

    folder = out_dir / "checkpoints" / f"step-{step:05d}"
    temp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(temp, ignore_errors=True)
    concept.save(temp)
    torch.save(dict(resume), temp / RESUME_FILE)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temp, folder)
    for older in folder.parent.glob(f"step-*/{RESUME_FILE}"):
        if older.parent != folder:
            older.unlink(missing_ok=True)
    return folder


def latest_resume_state(out_dir: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest readable ``resume.pt`` under ``out_dir/checkpoints/`` learned from the same inputs, or None."""
    for path in sorted(Path(out_dir).glob(f"checkpoints/step-*/{RESUME_FILE}"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated by a kill outside the atomic rename, or foreign: the next older one
            continue
        if state.get("fingerprint") == fingerprint:
            return state
    return None


def concept_snapshot(
    state: TrainState,
    source: ConceptSource,
    config: LearnConfig,
    method: str,
    preset: str,
    loss_log: list[dict[str, float]],
    seed: int,
) -> LearnedConcept:
    full_unet = any(p.unet_lr > 0 for p in config.schedule())
    return LearnedConcept(
        method=method,
        preset=preset,
        tokens=list(state.tokens.tokens),
        object_word=source.object_word,
        vectors=state.tokens.vectors(),
        attention_state=state.capture.state_dict(),
        attention_layers=list(state.capture.unet.attn_processors),
        train_kv=config.train_kv,
        train_q_out=config.train_q_out,
        model_id=state.components.model_id,
        weights_hash=state.components.weights_hash,
        config={**config.to_dict(), "seed": seed},
        loss_log=list(loss_log),
        extras={"architecture": components_architecture(state.components)},  # a model given later must match it
        unet_state={
            k: v.detach().clone() for k, v in state.components.unet.state_dict().items() if "processor" not in k
        }
        if full_unet
        else {},
        text_encoder_state={
            k: v.detach().clone()
            for k, v in state.components.text_encoder.state_dict().items()
            if "token_embedding" not in k
        }
        if any(p.text_encoder_lr > 0 for p in config.schedule())
        else {},
    )
