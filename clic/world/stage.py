"""What every stage of the tiny world is made of (:class:`Stage`), the settings a run's numbers follow from, its
result, and the names and gates the stages share. The bottom of :mod:`clic.world`: the stage modules
(:mod:`~clic.world.autoencoder`, :mod:`~clic.world.scorer`, :mod:`~clic.world.diffusion`,
:mod:`~clic.world.classifier`) and the training loop (:mod:`clic.world.train`) import it, it imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import WORLD_SEED

STAGES: tuple[str, ...] = ("autoencoder", "scorer", "unet", "classifier")
CHECKPOINT_NAME = "checkpoint.pt"
RECORD_NAME = "train-{stage}.json"
AUTOENCODER_GATE_PSNR = 25.0  # dB, held-out reconstruction (issue 29, stage 2)
SCORER_GATE_TOP1 = 0.80  # held-out text->image top-1 among 100 captions (issue 29, stage 3)
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


@dataclass
class Stage:
    build: Callable[[TrainSettings], torch.nn.Module]
    loss: Callable[[torch.nn.Module, int, torch.Generator, TrainSettings], torch.Tensor]
    evaluate: Callable[[torch.nn.Module, TrainSettings], dict]
    save: Callable[[torch.nn.Module, Path], Path]
