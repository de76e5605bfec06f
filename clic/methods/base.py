"""The ``Method`` contract the harness calls, and the defaults every method shares.

A method is a class with a name, named presets (config overrides, each hyper-parameter traceable to a
source), the tasks it supports, and four entry points: ``learn``, ``transfer``, ``generate``, ``match``.
The defaults run the shared loops (:mod:`clic.learn`, :mod:`clic.transfer`, :mod:`clic.generate`,
:mod:`clic.match`); a method overrides only what differs. Unsupported tasks raise
:class:`UnsupportedTask`, which the harness records as "not applicable" with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol

import torch

from ..concept import LearnedConcept
from ..learn import ConceptSource, LearnConfig, StepBatch, TrainState, fused_step, learn_concept
from ..losses import Objective
from ..models import SDComponents
from ..settings import MethodConfig

TASKS = frozenset({"learn", "transfer", "generate", "match"})


class UnsupportedTask(NotImplementedError):
    """The method does not define this task (e.g. RealFill has no two-stage generation)."""


# What each task returns: the harness reads these fields and nothing else.
class TransferOutput(Protocol):
    image: torch.Tensor  # (3, R, R) in [0, 1]
    attention: torch.Tensor  # (R, R) the concept's attention (or the edited region), any non-negative scale


class GenerationOutput(Protocol):
    images: torch.Tensor  # (N, 3, R, R) in [0, 1]
    prompt: str
    attention: torch.Tensor | None  # (N, R, R) or None when the method has no concept attention


class MatchOutput(Protocol):
    mask: torch.Tensor  # (H, W) bool: the predicted region


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tasks: ClassVar[frozenset[str]] = TASKS
    # What trains, in words, for tables and docs.
    trains: ClassVar[str] = ""
    base_config: ClassVar[LearnConfig] = LearnConfig()
    # preset -> {"learn": LearnConfig overrides, "transfer": TransferSettings overrides, ...}
    presets: ClassVar[dict[str, dict[str, Mapping[str, Any]]]] = {"default": {}}
    default_preset: ClassVar[str] = "default"
    # hyper-parameter -> where its value comes from (paper section or reference implementation)
    sources: ClassVar[dict[str, str]] = {}
    # Which model variant the method needs: "tiny" maps to "tiny-inpaint" for inpainting methods.
    needs_inpainting: ClassVar[bool] = False
    # False for methods that run without a diffusion model (cut-and-paste): the harness loads none.
    needs_model: ClassVar[bool] = True
    # True for methods that estimate their own masks (EM, ConceptExpress): a missing user mask is fine.
    estimates_masks: ClassVar[bool] = False

    # --------------------------------------------------------------------------------- configs
    def preset(self, preset: str | None) -> dict[str, Mapping[str, Any]]:
        preset = preset or self.default_preset
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r} for method {self.name!r}; known: {', '.join(sorted(self.presets))}")
        return self.presets[preset]

    def learn_config(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> LearnConfig:
        config = self.base_config.merged(self.preset(preset).get("learn"))
        return config.merged(overrides)

    def task_settings(self, task: str, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        own, given = dict(self.preset(preset).get(task, {})), dict(overrides or {})
        settings = {**own, **given}
        if task == "generate" and "steps" in given and "stage_one_steps" not in given:
            # A default stage-one length follows the given schedule as a share (the paper's 5 of 50 steps, §3.3):
            # only a value the user gave is refused when it does not fit.
            from ..generate import GenerateSettings

            share = own.get("stage_one_steps", GenerateSettings.stage_one_steps) / own.get("steps", GenerateSettings.steps)
            settings["stage_one_steps"] = min(int(given["steps"]), round(share * int(given["steps"])))
        return settings

    def preset_terms(self, preset: str | None = None) -> Mapping[str, Any]:
        """A preset's loss terms: a suite's ``loss_weights`` change their weights and keep their parameters."""
        return self.learn_config(preset).terms

    def check(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> MethodConfig:
        """The learning config of ``preset`` with ``overrides``, validated; ValueError names what is wrong (an
        unknown preset, key or loss term, a value out of range). A suite reader asks this before a run."""
        config = self.learn_config(preset, overrides)
        config.validate()
        Objective(config.terms)  # every term resolves (registered, or a custom fn that imports; known needs)
        return config

    def supports(self, task: str) -> bool:
        return task in self.tasks

    def require(self, task: str) -> None:
        if task not in self.tasks:
            raise UnsupportedTask(f"method {self.name!r} does not support {task!r} (supports: {', '.join(sorted(self.tasks))})")

    # ------------------------------------------------------------------------------------ tasks
    def training_step(self, state: TrainState, batch: StepBatch, object_word: str) -> tuple[torch.Tensor, dict[str, float]]:
        return fused_step(state, batch, object_word)

    def learn(
        self,
        components: SDComponents,
        source: ConceptSource,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> LearnedConcept:
        self.require("learn")
        config = self.learn_config(preset, overrides)
        return learn_concept(
            components, source, config, method=self.name, preset=preset or self.default_preset, seed=seed,
            step_fn=self.training_step, out_dir=out_dir, progress=progress,
        )

    def transfer(self, components: SDComponents, concept: LearnedConcept, target_image: torch.Tensor,
                 target_mask: torch.Tensor, object_word: str, *, preset: str | None = None,
                 overrides: Mapping[str, Any] | None = None, seed: int = 0) -> TransferOutput:
        from ..transfer import TransferSettings, transfer_concept

        self.require("transfer")
        settings = TransferSettings.from_dict(self.task_settings("transfer", preset or concept.preset, overrides))
        return transfer_concept(components, concept, target_image, target_mask, object_word, settings, seed=seed)

    def generate(self, components: SDComponents, concept: LearnedConcept, object_word: str, *,
                 preset: str | None = None, overrides: Mapping[str, Any] | None = None, seed: int = 0) -> GenerationOutput:
        from ..generate import GenerateSettings, generate_with_concept

        self.require("generate")
        settings = GenerateSettings.from_dict(self.task_settings("generate", preset or concept.preset, overrides))
        return generate_with_concept(components, concept, object_word, settings, seed=seed)

    def match(self, components: SDComponents, concept: LearnedConcept, target_image: torch.Tensor, object_word: str, *,
              preset: str | None = None, overrides: Mapping[str, Any] | None = None, seed: int = 0) -> MatchOutput:
        from ..match import MatchSettings, match_region

        self.require("match")
        settings = MatchSettings.from_dict(self.task_settings("match", preset or concept.preset, overrides))
        return match_region(components, concept, target_image, object_word, settings, seed=seed)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "trains": self.trains,
            "tasks": sorted(self.tasks),
            "presets": sorted(self.presets),
            "default_preset": self.default_preset,
            "sources": dict(self.sources),
        }


def get_method(name: str) -> Method:
    from . import method_class

    return method_class(name)()
