"""Checking a suite mapping (as read from YAML, or :meth:`Suite.to_dict`'s output) section by section into a
:class:`harness.plan.suite_model.Suite`, then resolving every method's settings once (harness.plan.resolve)."""

from __future__ import annotations

import dataclasses
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import clic.methods as method_registry
from clic.cli_checks import MAX_SEED
from harness.plan.locations import URI

from .suite_methods import MethodChecks
from .suite_model import (
    DEFAULT_TASKS,
    ESR_PROMPTS_KEYWORD,
    PROMPT_FIELDS,
    TASKS,
    TINY_MODELS,
    GenerateSpec,
    MatchSpec,
    Resources,
    Suite,
    TransferSpec,
)
from .suite_values import type_name

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")  # the name becomes runs/<name>


class SuiteReader(MethodChecks):
    """Checks one suite mapping, section by section (the generic and the registry checks are inherited)."""

    def suite(self, data: Any, default_name: str | None) -> Suite:
        allowed = [f.name for f in dataclasses.fields(Suite) if f.name != "source"] + ["manifest"]
        data = self.mapping(data, "", allowed)
        name, manifest_key = self.required_keys(data, default_name)
        transfer = self.transfer(data.get("transfer", {}))
        metrics = self.metrics(data["metrics"]) if "metrics" in data else self.default_metrics()
        suite = Suite(
            name=name,
            description=self.description(data.get("description", "")),
            manifests=self.manifests(data[manifest_key], manifest_key),
            model=self.model(data.get("model", "tiny")),
            inpainting_model=None
            if data.get("inpainting_model") is None
            else self.model(data["inpainting_model"], "inpainting_model"),
            resolution=None
            if data.get("resolution") is None
            else self.resolution(data["resolution"], "resolution", minimum=8),
            device=self.device_name(data.get("device", "auto")),
            dtype=self.choice(data.get("dtype", "fp32"), "dtype", ("fp32", "fp16", "bf16")),
            tf32=self.boolean(data.get("tf32", True), "tf32"),
            metric_actors=None
            if data.get("metric_actors") is None
            else self.integer(data["metric_actors"], "metric_actors", minimum=1, maximum=64),
            methods=self.methods(data["methods"], transfer),
            seeds=self.seeds(data.get("seeds", [0])),
            transfer=transfer,
            generate=self.generate(data.get("generate", {})),
            match=self.match(data.get("match", {})),
            metrics=metrics,
            metric_options=self.with_world_models(
                self.metric_options(data.get("metric_options", {}), metrics), metrics, data.get("model", "tiny")
            ),
            resources=self.resources(data.get("resources", {})),
            tasks=self.tasks(data.get("tasks", list(DEFAULT_TASKS))),
            limit_pairs=None
            if data.get("limit_pairs") is None
            else self.integer(data["limit_pairs"], "limit_pairs", minimum=1),
            source_masks=self.choice(data.get("source_masks", "use"), "source_masks", ("use", "estimate")),
            categories=None if data.get("categories") is None else self.strings(data["categories"], "categories"),
            source=self.source,
        )
        self.check_model_bounds(suite)
        self.check_inpainting_model(suite)
        from .resolve import resolve_runs

        return dataclasses.replace(suite, runs=resolve_runs(suite, self.fail))

    def required_keys(self, data: Mapping[str, Any], default_name: str | None) -> tuple[str, str]:
        """The suite's name (or the file's stem) and which manifest key it gives; ``methods`` must be there too."""
        if "name" in data:
            name = self.string(data["name"], "name")
            if not _SAFE_NAME.match(name):
                self.fail("name", f"must be usable as a folder name (letters, digits, '.', '_', '-'), got {name!r}")
        elif default_name:
            name = default_name
        else:
            self.fail("name", "missing (required)")
        if "manifest" in data and "manifests" in data:
            self.fail("manifests", "give either manifest or manifests, not both")
        manifest_key = "manifests" if "manifests" in data else "manifest"
        if manifest_key not in data:
            self.fail("manifest", "missing (required): the manifest(s) to run, relative to the suite file")
        if "methods" not in data:
            self.fail("methods", "missing (required): a list of {name, presets, loss_weights, learn}")
        return name, manifest_key

    def check_inpainting_model(self, suite: Suite) -> None:
        """A method on an inpainting UNet (RealFill) needs one named beside a real model."""
        for index, spec in enumerate(suite.methods):
            needs_inpainting = getattr(method_registry.method_class(spec.name), "needs_inpainting", False)
            if needs_inpainting and suite.model not in TINY_MODELS and suite.inpainting_model is None:
                self.fail(
                    f"methods[{index}].name",
                    f"method {spec.name!r} runs on an inpainting UNet: set "
                    "inpainting_model to an SD inpainting folder or HF id",
                )

    def check_model_bounds(self, suite: Suite) -> None:
        """Schedules within the model's scheduler, generated images within memory (clic.limits)."""
        from clic.limits import image_memory_problem, schedule_steps_problem
        from clic.models import train_timesteps

        timesteps = train_timesteps(suite.model)
        for key, steps in (("transfer.steps", suite.transfer.steps), ("generate.steps", suite.generate.steps)):
            problem = schedule_steps_problem(steps, timesteps)
            if problem is not None:
                self.fail(key, f"{problem} (model {suite.model})")
        if "generate" in suite.tasks:
            images = suite.generate.images_per_seed
            problem = image_memory_problem(suite.resolution or 8, images)
            if problem is not None:
                self.fail("generate.images_per_seed", f"{images} is too large: {problem}")

    def device_name(self, value: Any) -> str:
        value = self.string(value, "device")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            self.fail("device", f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    def description(self, value: Any) -> str:
        if not isinstance(value, str):
            self.fail("description", f"expected a string, got {type_name(value)}")
        return value

    def manifests(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str) and key == "manifest":
            return (self.manifest_location(value, key),)
        items = self.list_of(value, key)
        return tuple(
            self.manifest_location(self.string(item, f"{key}[{i}]"), f"{key}[{i}]") for i, item in enumerate(items)
        )

    def manifest_location(self, value: str, key: str) -> str:
        value = self.string(value, key)
        if URI.match(value) and not value.lower().startswith("file://"):
            return value
        local = Path(unquote(urlparse(value).path) if URI.match(value) else value).expanduser()
        resolved = local if local.is_absolute() else self.base_dir / local
        if not resolved.exists():
            self.fail(key, f"file not found: {value} (resolved to {resolved})")
        return os.path.abspath(resolved)

    def model(self, value: Any, key: str = "model") -> str:
        value = self.string(value, key)
        if value in TINY_MODELS:
            return value
        relative = self.base_dir / Path(value).expanduser()
        if relative.is_dir() or relative.is_file():  # a folder or checkpoint file named relative to the suite file
            return os.path.abspath(relative)
        return value  # "tiny", an HF id, or a path clic.models resolves

    def seeds(self, value: Any) -> tuple[int, ...]:
        items = self.list_of(value, "seeds")
        return tuple(self.integer(seed, f"seeds[{i}]", minimum=0, maximum=MAX_SEED) for i, seed in enumerate(items))

    def tasks(self, value: Any) -> tuple[str, ...]:
        items = self.strings(value, "tasks")
        for index, task in enumerate(items):
            if task not in TASKS:
                self.fail(f"tasks[{index}]", f"unknown task {task!r} (known: {', '.join(TASKS)})")
        return items

    def transfer(self, value: Any) -> TransferSpec:
        data = self.mapping(value, "transfer", [f.name for f in dataclasses.fields(TransferSpec)])
        steps = self.steps(data.get("steps", TransferSpec.steps), "transfer.steps")
        t_start = None
        if data.get("t_start") is not None:
            items = self.list_of(data["t_start"], "transfer.t_start")
            t_start = tuple(
                self.integer(
                    t, f"transfer.t_start[{i}]", minimum=1, maximum=steps - 1, what=f" (T = transfer.steps = {steps})"
                )
                for i, t in enumerate(items)
            )
        eta = None
        if data.get("eta") is not None:
            items = self.list_of(data["eta"], "transfer.eta")
            eta = tuple(self.number(e, f"transfer.eta[{i}]", minimum=0.0) for i, e in enumerate(items))
        guidance = self.number(
            data.get("guidance_scale", TransferSpec.guidance_scale), "transfer.guidance_scale", minimum=0.0
        )
        return TransferSpec(t_start, eta, steps, guidance)

    def generate(self, value: Any) -> GenerateSpec:
        data = self.mapping(value, "generate", [f.name for f in dataclasses.fields(GenerateSpec)])
        steps = self.steps(data.get("steps", GenerateSpec.steps), "generate.steps")
        return GenerateSpec(
            objects=self.strings(data.get("objects", []), "generate.objects", allow_empty=True),
            prompts=self.prompts(data.get("prompts", [])),
            stage_one_steps=None
            if data.get("stage_one_steps") is None
            else self.integer(
                data["stage_one_steps"],
                "generate.stage_one_steps",
                minimum=0,
                maximum=steps,
                what=f" (generate.steps = {steps})",
            ),
            steps=steps,
            images_per_seed=self.integer(
                data.get("images_per_seed", GenerateSpec.images_per_seed), "generate.images_per_seed", minimum=1
            ),
        )

    def prompts(self, value: Any) -> tuple[str, ...]:
        if value == ESR_PROMPTS_KEYWORD:
            from ..metrics.options import EDIT_PROMPTS

            return tuple(EDIT_PROMPTS)
        prompts = self.strings(value, "generate.prompts", allow_empty=True)
        for i, prompt in enumerate(prompts):
            try:
                fields = {name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None}
            except ValueError as error:  # e.g. an unmatched brace
                self.fail(f"generate.prompts[{i}]", f"{prompt!r} is not a prompt template: {error}")
            if fields - PROMPT_FIELDS:
                self.fail(
                    f"generate.prompts[{i}]",
                    f"unknown placeholder(s) {sorted(fields - PROMPT_FIELDS)} in "
                    f"{prompt!r} (known: {{object}}, {{tokens}}, {{token}})",
                )
            if not fields & {"tokens", "token"}:
                self.fail(f"generate.prompts[{i}]", f"{prompt!r} does not name the concept ({{tokens}} or {{token}})")
        return prompts

    def match(self, value: Any) -> MatchSpec:
        data = self.mapping(value, "match", [f.name for f in dataclasses.fields(MatchSpec)])
        return MatchSpec(
            enabled=self.boolean(data.get("enabled", MatchSpec.enabled), "match.enabled"),
            steps=self.steps(data.get("steps", MatchSpec.steps), "match.steps"),
        )

    def resources(self, value: Any) -> Resources:
        data = self.mapping(value, "resources", [f.name for f in dataclasses.fields(Resources)])
        return Resources(
            num_cpus=self.number(data.get("num_cpus", Resources.num_cpus), "resources.num_cpus", positive=True),
            num_gpus=self.number(data.get("num_gpus", Resources.num_gpus), "resources.num_gpus", minimum=0.0),
            max_retries=self.integer(
                data.get("max_retries", Resources.max_retries), "resources.max_retries", minimum=0
            ),
            memory_gb=None
            if data.get("memory_gb") is None
            else self.number(data["memory_gb"], "resources.memory_gb", positive=True),
            custom={
                str(name): self.number(amount, f"resources.custom.{name}", positive=True)
                for name, amount in self.mapping(data.get("custom", {}), "resources.custom").items()
            },
            gpu_memory_gib=None
            if data.get("gpu_memory_gib") is None
            else self.number(data["gpu_memory_gib"], "resources.gpu_memory_gib", positive=True),
        )
