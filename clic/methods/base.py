"""The ``Method`` contract the harness calls, and the defaults every method shares.

A method is a class with a name, named presets (config overrides, each hyper-parameter traceable to a
source), the tasks it supports, and four entry points: ``learn``, ``transfer``, ``generate``, ``match``.
The defaults run the shared loops (:mod:`clic.learn`, :mod:`clic.transfer`, :mod:`clic.generate`,
:mod:`clic.match`); a method overrides only what differs. Unsupported tasks raise
:class:`UnsupportedTask`, which the harness records as "not applicable" with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from ..components import SDComponents
from ..concept import LearnedConcept
from ..learn import ConceptSource, LearnConfig, StepBatch, TrainState, fused_step, learn_concept
from ..losses import Objective
from ..settings import MethodConfig, Settings

TASKS = frozenset({"learn", "transfer", "generate", "match"})
# Where a method that estimates its own masks (``estimates_masks``) keeps mask k in the concept's arrays; the
# harness scores every ``estimated_mask*`` array against the ground truth.
ESTIMATED_MASK_KEY = "estimated_mask_{index}"
# The settings class of each task the shared loops run ("module:Class", imported when first resolved).
TASK_SETTINGS = {
    "transfer": "clic.transfer:TransferSettings",
    "generate": "clic.generate:GenerateSettings",
    "match": "clic.match:MatchSettings",
}


def settings_type(target: str) -> type[Settings]:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


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


@dataclass(frozen=True)
class GpuMemory:
    """Peak GPU memory of a learning job on SD 1.x: the frozen model's weights in the run's dtype, what trains (with
    its gradients and the optimizer's moments, fp32 master copies in any dtype), and what autograd keeps for
    backward, counted at 512 px in fp32 and growing with the number of pixels (halved in fp16/bf16).

    Counted figures (benchmarks/perf/README.md, "Extrapolation to 512 px on one GPU", SD 1.5 architecture):
    weights 3.97 GiB fp32 (UNet 3.20, text encoder 0.46, VAE 0.31), ≈ 2 GiB in bf16; CLiC's fused step keeps
    2.84 GiB for backward at 512 px and its K/V copies + v* with gradients and Adam's moments take 0.29 GiB.
    """

    trained_gib: float
    saved_512_gib: float
    source: str
    WEIGHTS_GIB: ClassVar[dict[str, float]] = {"fp32": 3.97, "bf16": 2.0, "fp16": 2.0}

    def gib(self, resolution: int, dtype: str) -> float:
        half = 0.5 if dtype in ("bf16", "fp16") else 1.0
        return (
            self.WEIGHTS_GIB.get(dtype, 3.97) + self.trained_gib + self.saved_512_gib * half * (resolution / 512) ** 2
        )


# CLiC's fused step on SD 1.5, counted (benchmarks/perf/README.md, "Extrapolation to 512 px on one GPU"):
# K/V copies + v* (19.2 M parameters) with gradients and Adam's moments 0.29 GiB; kept for backward 2.84 GiB at 512 px.
CROSS_ATTENTION_MEMORY = GpuMemory(0.29, 2.84, "counted: benchmarks/perf/README.md (CLiC fused step, SD 1.5, 512 px)")


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
    # task -> its settings class ("module:Class"), or None where the method reads no settings for that task
    # (cut-and-paste's transfer); a task not named here uses TASK_SETTINGS.
    task_settings_types: ClassVar[Mapping[str, str | None]] = {}
    # Expected peak GPU memory of one learning job on SD 1.x, per preset ("*": any other), or None when unknown:
    # the harness packs jobs onto GPUs by it (harness.execute.packing).
    gpu_memory: ClassVar[Mapping[str, GpuMemory] | None] = None

    def expected_gpu_memory_gib(self, preset: str | None, resolution: int, dtype: str) -> float | None:
        """GiB one learning job of ``preset`` is expected to peak at on SD 1.x (None: not declared)."""
        if not self.gpu_memory:
            return None
        memory = self.gpu_memory.get(preset or self.default_preset) or self.gpu_memory.get("*")
        return memory.gib(resolution, dtype) if memory else None

    # --------------------------------------------------------------------------------- configs
    def preset(self, preset: str | None) -> dict[str, Mapping[str, Any]]:
        preset = preset or self.default_preset
        if preset not in self.presets:
            raise ValueError(
                f"unknown preset {preset!r} for method {self.name!r}; known: {', '.join(sorted(self.presets))}"
            )
        return self.presets[preset]

    def learn_config(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> LearnConfig:
        config = self.base_config.merged(self.preset(preset).get("learn"))
        return config.merged(overrides)

    def task_settings(
        self, task: str, preset: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        own, given = dict(self.preset(preset).get(task, {})), dict(overrides or {})
        settings = {**own, **given}
        if task == "generate" and "steps" in given and "stage_one_steps" not in given:
            # A default stage-one length follows the given schedule as a share (the paper's 5 of 50 steps, §3.3):
            # only a value the user gave is refused when it does not fit.
            from ..generate import GenerateSettings

            share = own.get("stage_one_steps", GenerateSettings.stage_one_steps) / own.get(
                "steps", GenerateSettings.steps
            )
            settings["stage_one_steps"] = min(int(given["steps"]), round(share * int(given["steps"])))
        return settings

    def preset_terms(self, preset: str | None = None) -> Mapping[str, Any]:
        """A preset's loss terms: a suite's ``loss_weights`` change their weights and keep their parameters."""
        return self.learn_config(preset).terms

    def settings_class(self, task: str) -> type[Settings] | None:
        """The settings class this method reads for ``task`` (None: the task takes no settings)."""
        if task == "learn":
            return type(self.base_config)
        target = self.task_settings_types.get(task, TASK_SETTINGS.get(task))
        return settings_type(target) if target else None

    def resolve(
        self, task: str, preset: str | None = None, overrides: Mapping[str, Any] | Settings | None = None
    ) -> Settings | None:
        """The one place a method's settings are resolved: ``preset``'s values merged with ``overrides``, typed and
        validated (``ValueError`` names what is wrong: an unknown preset, key or loss term, a value out of range).
        The suite reader, the plan, the worker and ``clic`` commands all resolve through here; settings that are
        already resolved (an instance of the task's class) are returned unchanged, so what a plan recorded is
        what runs. None for a task the method reads no settings for."""
        cls = self.settings_class(task)
        if cls is None:
            return None
        if isinstance(overrides, cls):
            return overrides
        if isinstance(overrides, Settings):
            raise TypeError(f"{self.name} {task}: expected {cls.__name__} settings, got {type(overrides).__name__}")
        if task == "learn":
            config = self.learn_config(preset, overrides)
            config.validate()
            if getattr(config, "terms", None):  # every term resolves (registered, or a custom fn that imports)
                Objective(config.terms)
            return config
        return cls.from_dict(self.task_settings(task, preset, overrides))

    def check(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> MethodConfig:
        """The resolved learning config of ``preset`` with ``overrides`` (see :meth:`resolve`)."""
        return self.resolve("learn", preset, overrides)

    def supports(self, task: str) -> bool:
        return task in self.tasks

    def require(self, task: str) -> None:
        if task not in self.tasks:
            raise UnsupportedTask(
                f"method {self.name!r} does not support {task!r} (supports: {', '.join(sorted(self.tasks))})"
            )

    # ------------------------------------------------------------------------------------ tasks
    def training_step(
        self, state: TrainState, batch: StepBatch, object_word: str
    ) -> tuple[torch.Tensor, dict[str, float]]:
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
        config = self.resolve("learn", preset, overrides)
        return learn_concept(
            components,
            source,
            config,
            method=self.name,
            preset=preset or self.default_preset,
            seed=seed,
            step_fn=self.training_step,
            out_dir=out_dir,
            progress=progress,
        )

    def transfer(
        self,
        components: SDComponents,
        concept: LearnedConcept,
        target_image: torch.Tensor,
        target_mask: torch.Tensor,
        object_word: str,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | Settings | None = None,
        seed: int = 0,
    ) -> TransferOutput:
        from ..transfer import transfer_concept

        self.require("transfer")
        settings = self.resolve("transfer", preset or concept.preset, overrides)
        return transfer_concept(components, concept, target_image, target_mask, object_word, settings, seed=seed)

    def generate(
        self,
        components: SDComponents,
        concept: LearnedConcept,
        object_word: str,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | Settings | None = None,
        seed: int = 0,
    ) -> GenerationOutput:
        from ..generate import generate_with_concept

        self.require("generate")
        settings = self.resolve("generate", preset or concept.preset, overrides)
        return generate_with_concept(components, concept, object_word, settings, seed=seed)

    def match(
        self,
        components: SDComponents,
        concept: LearnedConcept,
        target_image: torch.Tensor,
        object_word: str,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | Settings | None = None,
        seed: int = 0,
    ) -> MatchOutput:
        from ..match import match_region

        self.require("match")
        settings = self.resolve("match", preset or concept.preset, overrides)
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
