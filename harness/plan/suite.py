"""Suite files: what a benchmark run contains, as YAML, checked before anything runs.

A suite file (``benchmarks/*.yaml``)::

    name: smoke                       # default: the file's stem
    description: ""                   # free text for reports
    manifest: ../manifests/furniture/manifest.parquet  # required; relative to this file, a URI, or a list
                                      # (``manifests: [...]`` is the same key in its list form)
    model: tiny                       # "tiny", a local diffusers folder or single-file .safetensors/.ckpt (relative to this file) or an HF id
    inpainting_model: null            # default null: tiny -> tiny-inpaint; real runs of RealFill name an SD inpainting model
    resolution: null                  # default null: the model's native image side (64 tiny, 512 SD 1.x)
    device: auto                      # default auto: the GPU Ray assigned a task (resources.num_gpus > 0), else the CPU
    dtype: fp32                       # default fp32; fp16 | bf16: the frozen model's precision (trained weights stay fp32)
    tf32: true                        # default true: TF32 matmul/cuDNN on GPUs that have it (Ampere+); false: exact fp32
    metric_actors: 2                  # default null: 1 actor, or one per 4 GPUs (up to 4) on a GPU cluster; each holds every
                                      # metric's models once, on a GPU slot (0.1) where the cluster has GPUs
    methods:                          # required, at least one
      - name: clic                    # a registered method (clic.methods)
        presets: [paper, official-code]   # default: the method's default preset
        loss_weights: {att: 0.25}     # default {}: the preset's weights; term -> weight >= 0
        learn: {steps: 500, lr: 1.0e-5, resolution: 512}   # default {}: LearnConfig overrides
    seeds: [0]                        # default [0]
    transfer:
      t_start: [5, 10, 15]            # default null: each preset's own; each in [1, steps - 1] (steps kept)
      eta: [1.0]                      # default null: each preset's own; attention-guidance step size >= 0
      steps: 50                       # default 50: DDIM schedule length T
      guidance_scale: 7.5             # default 7.5
    generate:
      objects: [chair, sofa]          # default []: each pair's target_object
      prompts: ["a red {object} with {tokens} style"]   # default []: each preset's prompt; "esr": the fixed
                                      # editing prompts of harness.metrics.esr; {object} {tokens} {token}
      stage_one_steps: 5              # default: the method preset's (CLiC: 5); in [0, steps]
      steps: 50                       # default 50
      images_per_seed: 1              # default 1; every image is scored, a job's value is their mean
    match:
      enabled: true                   # default true: predict missing target masks by RoI matching
      steps: 500                      # default 500
    metrics: [clip_image, lpips]      # default: DEFAULT_METRICS (those registered); harness.metrics names
    metric_options: {clip: {model: ViT-B-32}}   # default {}; key: a model family its metrics declare (clip, lpips, dino, esr)
    resources: {num_cpus: 1, num_gpus: 0.5, max_retries: 2}   # default 1 CPU, 0 GPU per task (fractions allowed);
                                      # max_retries: reruns of a task whose worker died or ran out of memory;
                                      # memory_gb: host memory per task (default null); custom: Ray custom
                                      # resources per task, e.g. {A100: 1} (default {}); a request no node of
                                      # the cluster can satisfy is refused before any job is submitted
                                      # gpu_memory_gib: one GPU's memory (default null): a method declaring its
                                      # expected memory (clic.methods.base.GpuMemory) is packed by it; a
                                      # method entry's own resources: {num_gpus, num_cpus} win over both
    tasks: [transfer]                 # default [transfer]; subset of transfer, generate, match
    limit_pairs: 10                   # default null: every good pair
    source_masks: use                 # default use; "estimate": learn without the source masks (they become
                                      # ground truth for estimated_mask_iou)
    categories: [furniture]           # default null: every category

``match.enabled`` decides whether pairs without a ``target_mask`` get one predicted by RoI matching (off:
such pairs are not applicable to transfer); the ``match`` *task* scores predicted masks against
``target_mask_gt``. A float like ``1e-5`` is read as a number (plain YAML 1.1 would read a string).

Bounds tied to the model and the machine (:mod:`clic.limits`, the same as ``clic``'s): ``transfer.steps`` and
``generate.steps`` at most the model scheduler's ``num_train_timesteps`` (1000 for SD and tiny); ``resolution``,
``learn.resolution`` and ``generate.images_per_seed`` within what this machine's memory can hold at least.

Every mistake is a :class:`SuiteError` whose message is one line naming the file and the key path, e.g.
``benchmarks/smoke.yaml: methods[1].presets[0]: unknown preset 'fast' for method 'clic' (known: ...)``.
:meth:`Suite.to_dict` is the canonical JSON form (defaults filled in, numbers normalised) that job ids
are hashed from; :func:`suite_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import unquote, urlparse

import yaml

import clic.methods as method_registry
from clic.cli_checks import MAX_SEED
from harness.errors import SuiteError, UsageError  # noqa: F401 - SuiteError is read from here by callers
from harness.plan.locations import URI
from harness.plan.yaml_budget import BudgetedLoader, YamlBudgetError

TASKS = ("transfer", "generate", "match")
DEFAULT_TASKS = ("transfer",)
# clic.models.TINY_PRESETS, repeated so that importing this module does not import torch (reading a suite does: it
# resolves every method's settings through the method's class, harness.plan.resolve.resolve_runs).
TINY_MODELS = ("tiny", "tiny-inpaint", "tiny-v")
DEFAULT_METRICS = ("clip_image", "clip_text", "lpips", "ssim_psnr", "mask_iou")
ESR_PROMPTS_KEYWORD = "esr"  # generate.prompts: esr -> the editing prompts the esr metric judges
PROMPT_FIELDS = frozenset({"object", "tokens", "token"})  # what clic.learn.format_prompt fills in
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")  # the name becomes runs/<name>


# ------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class MethodSpec:
    name: str
    presets: tuple[str, ...]
    loss_weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    learn: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    resources: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # num_gpus/num_cpus per job

    def learn_overrides(self, base_terms: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``learn`` overrides with ``loss_weights`` folded into ``terms``.

        ``base_terms`` are the preset's terms: a term given there as ``{"weight": w, ...}`` keeps its
        other parameters (e.g. the context loss's alpha) and only changes its weight.
        """
        overrides = _thaw(self.learn)
        if not self.loss_weights:
            return overrides
        terms = dict(overrides.get("terms") or {})
        for term, weight in self.loss_weights.items():
            spec = terms.get(term, (base_terms or {}).get(term))
            terms[term] = {**dict(spec), "weight": weight} if isinstance(spec, Mapping) else weight
        overrides["terms"] = terms
        return overrides


@dataclass(frozen=True)
class TransferSpec:
    t_start: tuple[int, ...] | None = None  # None: each preset's own value
    eta: tuple[float, ...] | None = None  # None: each preset's own value
    steps: int = 50
    guidance_scale: float = 7.5


@dataclass(frozen=True)
class GenerateSpec:
    objects: tuple[str, ...] = ()  # empty: each pair's target_object
    prompts: tuple[str, ...] = ()  # empty: each method preset's own prompt template
    stage_one_steps: int | None = None  # None: the method preset's (CLiC's paper preset: 5)
    steps: int = 50
    images_per_seed: int = 1


@dataclass(frozen=True)
class MatchSpec:
    enabled: bool = True
    steps: int = 500


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2  # retries of a task whose worker died (system failures; errors are not retried)
    memory_gb: float | None = None  # host memory per job (Ray's `memory`): jobs are packed so that it fits
    custom: Mapping[str, float] = field(default_factory=dict)  # Ray custom resources per job, e.g. {A100: 1}
    gpu_memory_gib: float | None = None  # one GPU's memory: jobs of methods that declare theirs are packed by it


@dataclass(frozen=True)
class Suite:
    name: str
    manifests: tuple[str, ...]  # absolute local paths or URIs
    methods: tuple[MethodSpec, ...]
    model: str = "tiny"
    inpainting_model: str | None = None  # for methods on an inpainting UNet (RealFill); tiny -> tiny-inpaint
    resolution: int | None = None  # image side the methods run at; None: the model's native resolution
    device: str = "auto"  # clic.device.resolve_device in each worker
    dtype: str = "fp32"  # fp32 | fp16 | bf16: part of every concept id
    tf32: bool = (
        True  # TF32 matmul/cuDNN on GPUs that have it (Ampere+); false: exact fp32 (clic.device.configure_tf32)
    )
    metric_actors: int | None = None  # metric actors scoring in parallel; None: 1, or one per 4 GPUs (up to 4)
    description: str = ""
    seeds: tuple[int, ...] = (0,)
    transfer: TransferSpec = TransferSpec()
    generate: GenerateSpec = GenerateSpec()
    match: MatchSpec = MatchSpec()
    metrics: tuple[str, ...] = DEFAULT_METRICS
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    resources: Resources = Resources()
    tasks: tuple[str, ...] = DEFAULT_TASKS
    limit_pairs: int | None = None
    # "use": methods learn from the manifest's source masks; "estimate": they learn without them (EM,
    # ConceptExpress, CLiC's automatic source mask) and the masks serve only as ground truth for metrics.
    source_masks: str = "use"
    categories: tuple[str, ...] | None = None
    source: str = field(default="", compare=False)  # the suite file, for messages
    # Per method entry, per preset: the settings resolved once when the suite is read (harness.plan.resolve).
    runs: tuple = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-serialisable form, keyed as in the suite file (manifests always as ``manifests: [...]``)."""
        return {
            "name": self.name,
            "description": self.description,
            "manifests": list(self.manifests),
            "model": self.model,
            "inpainting_model": self.inpainting_model,
            "resolution": self.resolution,
            "device": self.device,
            "dtype": self.dtype,
            "tf32": self.tf32,
            "metric_actors": self.metric_actors,
            "methods": [
                {
                    "name": m.name,
                    "presets": list(m.presets),
                    "loss_weights": _thaw(m.loss_weights),
                    "learn": _thaw(m.learn),
                    **({"resources": dict(m.resources)} if m.resources else {}),
                }
                for m in self.methods
            ],
            "seeds": list(self.seeds),
            "transfer": _thaw(dataclasses.asdict(self.transfer)),
            "generate": _thaw(dataclasses.asdict(self.generate)),
            "match": dataclasses.asdict(self.match),
            "metrics": list(self.metrics),
            "metric_options": _thaw(self.metric_options),
            "resources": dataclasses.asdict(self.resources),
            "tasks": list(self.tasks),
            "limit_pairs": self.limit_pairs,
            "source_masks": self.source_masks,
            "categories": list(self.categories) if self.categories is not None else None,
        }


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------- reading


class _SuiteLoader(BudgetedLoader):
    """SafeLoader that refuses duplicate keys, reads 1e-5 as a float and refuses alias bombs
    (:class:`harness.plan.yaml_budget.BudgetedLoader`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_suite(path: str | os.PathLike[str], sets: Sequence[str] = ()) -> Suite:
    """Read and check a suite file (the keys and defaults are in the module docstring); ``sets``: command-line
    ``KEY=VALUE`` overrides applied to the raw mapping first (harness.plan.overrides), checked as the file is."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"{source}: cannot read ({' '.join(str(err).split())})") from None
    try:
        data = yaml.load(text, Loader=_SuiteLoader)
    except yaml.YAMLError as err:
        raise SuiteError(f"{source}: {_yaml_problem(err)}") from None
    except YamlBudgetError as err:
        raise SuiteError(f"{source}: {err}") from None
    if data is None:
        raise SuiteError(f"{source}: the suite file is empty")
    if sets:
        from .overrides import apply_sets

        data = apply_sets(data, sets)
    return suite_from_dict(data, source=source, base_dir=Path(source).resolve().parent, default_name=Path(source).stem)


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML ({' '.join(str(problem).split())})"


def suite_from_dict(
    data: Any,
    *,
    source: str = "<suite>",
    base_dir: str | os.PathLike[str] | None = None,
    default_name: str | None = None,
) -> Suite:
    """Check a suite given as a mapping (as read from YAML, or :meth:`Suite.to_dict`'s output)."""
    return _SuiteReader(source, Path(base_dir) if base_dir is not None else Path.cwd()).suite(data, default_name)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _SuiteReader:
    """Checks one suite mapping; every check knows its key path for the error line."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, message: str) -> NoReturn:
        raise SuiteError(f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}")

    # --------------------------------------------------------------------------- typed values
    def mapping(self, value: Any, key: str, allowed: Sequence[str] | None = None) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, f"expected a mapping, got {_type_name(value)}")
        for name in value:
            if not isinstance(name, str):
                self.fail(key, f"keys must be strings, got {_type_name(name)} {name!r}")
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(allowed)}"
                self.fail(self.join(key, name), f"unknown key ({hint})")
        return value

    @staticmethod
    def join(key: str, name: str) -> str:
        return f"{key}.{name}" if key else name

    def list_of(self, value: Any, key: str, *, allow_empty: bool = False, unique: bool = True) -> list[Any]:
        if not isinstance(value, list):
            self.fail(
                key,
                f"expected a list, got {_type_name(value)} {value!r}"
                if value is not None
                else "expected a list, got null",
            )
        if not value and not allow_empty:
            self.fail(key, "must not be empty")
        if unique:
            for index, item in enumerate(value):
                if item in value[:index]:
                    self.fail(f"{key}[{index}]", f"duplicate {item!r}")
        return value

    def integer(
        self, value: Any, key: str, *, minimum: int | None = None, maximum: int | None = None, what: str = ""
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_type_name(value)} {value!r}")
        self.check_range(value, key, minimum, maximum, what)
        return value

    def number(self, value: Any, key: str, *, minimum: float | None = None, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"expected a number, got {_type_name(value)} {value!r}")
        if not math.isfinite(value):  # .inf / .nan would pass every range check below
            self.fail(key, f"must be a finite number, got {value}")
        if positive and value <= 0:
            self.fail(key, f"must be positive, got {value}")
        self.check_range(value, key, minimum, None, "")
        return float(value)

    def check_range(self, value: float, key: str, minimum: float | None, maximum: float | None, what: str) -> None:
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            self.fail(key, f"{value} is outside [{minimum}, {maximum}]{what}")
        if minimum is not None and value < minimum:
            self.fail(
                key, f"must be positive, got {value}" if minimum == 1 else f"must be at least {minimum}, got {value}"
            )
        if maximum is not None and value > maximum:
            self.fail(key, f"must be at most {maximum}, got {value}")

    def steps(self, value: Any, key: str) -> int:
        return self.integer(value, key, minimum=1)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_type_name(value)} {value!r}")
        if not value.strip():
            self.fail(key, "must not be empty")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_type_name(value)} {value!r}")
        return value

    def strings(self, value: Any, key: str, *, allow_empty: bool = False) -> tuple[str, ...]:
        items = self.list_of(value, key, allow_empty=allow_empty)
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(items))

    # ---------------------------------------------------------------------------- sections
    def suite(self, data: Any, default_name: str | None) -> Suite:
        allowed = [f.name for f in dataclasses.fields(Suite) if f.name != "source"] + ["manifest"]
        data = self.mapping(data, "", allowed)
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
            metric_options=self.with_world_clip(
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
        for index, spec in enumerate(suite.methods):
            needs_inpainting = getattr(method_registry.method_class(spec.name), "needs_inpainting", False)
            if needs_inpainting and suite.model not in TINY_MODELS and suite.inpainting_model is None:
                self.fail(
                    f"methods[{index}].name",
                    f"method {spec.name!r} runs on an inpainting UNet: set "
                    "inpainting_model to an SD inpainting folder or HF id",
                )
        from .resolve import resolve_runs

        return dataclasses.replace(suite, runs=resolve_runs(suite, self.fail))

    def resolution(self, value: Any, key: str, minimum: int) -> int:
        """An image side that this machine's memory can hold (clic.limits: a floor, checked before any work)."""
        from clic.limits import image_memory_problem

        value = self.integer(value, key, minimum=minimum)
        problem = image_memory_problem(value)
        if problem is not None:
            self.fail(key, f"{value} is too large: {problem}")
        return value

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

    def choice(self, value: Any, key: str, choices: Sequence[str]) -> str:
        value = self.string(value, key)
        if value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def device_name(self, value: Any) -> str:
        value = self.string(value, "device")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            self.fail("device", f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    def description(self, value: Any) -> str:
        if not isinstance(value, str):
            self.fail("description", f"expected a string, got {_type_name(value)}")
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

    # ------------------------------------------------------------------------------ metrics
    @staticmethod
    def available_metrics() -> list[str]:
        from harness.metrics import available_metrics

        return available_metrics()

    def default_metrics(self) -> tuple[str, ...]:
        known = set(self.available_metrics())
        return tuple(m for m in DEFAULT_METRICS if m in known)

    def metrics(self, value: Any) -> tuple[str, ...]:
        items = self.strings(value, "metrics")
        known = self.available_metrics()
        for index, metric in enumerate(items):
            if metric not in known:
                self.fail(f"metrics[{index}]", f"unknown metric {metric!r} (known: {', '.join(known)})")
        return items

    def metric_options(self, value: Any, metrics: Sequence[str]) -> Mapping[str, Mapping[str, Any]]:
        """Options per model family ("clip" for every CLIP metric), checked against what the suite's metrics
        declare (harness.metrics.options): an unknown family, key or value is one line naming it."""
        from harness.metrics import metric_class
        from harness.metrics.options import declared_families, option_problems

        data = self.mapping(value, "metric_options")
        if not data:
            return _freeze(data)
        families = declared_families([metric_class(name) for name in metrics])
        # A plugin metric that declares nothing reads options under its own name, unchecked (it says nothing).
        undeclared = {name for name in metrics if getattr(metric_class(name), "options", None) is None}
        for name, options in data.items():
            key = f"metric_options.{name}"
            self.mapping(options, key)
            self.finite_everywhere(options, key)
            if name in undeclared:
                continue
            if name not in families:
                users = {
                    family: [m for m in metrics if family in (getattr(metric_class(m), "options", None) or {})]
                    for family in families
                }
                hint = (
                    (
                        f"; options of {name!r} go under its model family: "
                        + ", ".join(f"{f} ({', '.join(u)})" for f, u in users.items() if name in u)
                    )
                    if any(name in u for u in users.values())
                    else ""
                )
                self.fail(
                    key,
                    f"no metric of this suite reads options {name!r} (families: "
                    f"{', '.join(sorted(families)) or 'none'}){hint}",
                )
            for option, problem in option_problems(name, options, families[name]):
                self.fail(f"{key}.{option}", problem)
        return _freeze(data)

    @staticmethod
    def with_world_clip(
        options: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], model: Any
    ) -> Mapping[str, Mapping[str, Any]]:
        """On ``model: tiny-world``, the CLIP metrics score with the world scorer (clip.model: tiny-world) unless
        the suite names another CLIP: a real CLIP knows nothing of the synthetic world's captions."""
        from harness.metrics import metric_class
        from harness.metrics.options import WORLD_CLIP

        if model != WORLD_CLIP or "model" in options.get("clip", {}):
            return options
        if not any("clip" in (getattr(metric_class(name), "options", None) or {}) for name in metrics):
            return options
        return _freeze({**_thaw(options), "clip": {**dict(options.get("clip", {})), "model": WORLD_CLIP}})

    def finite_everywhere(self, value: Any, key: str) -> None:
        """No .inf or .nan anywhere in a free-form mapping (options passed on to a metric or a method)."""
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value}")
        if isinstance(value, Mapping):
            for name, item in value.items():
                self.finite_everywhere(item, self.join(key, str(name)))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self.finite_everywhere(item, f"{key}[{index}]")

    # ------------------------------------------------------------------------------ methods
    def methods(self, value: Any, transfer: TransferSpec) -> tuple[MethodSpec, ...]:
        items = self.list_of(value, "methods", unique=False)
        specs = tuple(self.method(item, f"methods[{i}]", transfer) for i, item in enumerate(items))
        seen: dict[str, int] = {}
        for index, spec in enumerate(specs):
            key = (spec.name, spec.presets, _thaw(spec.loss_weights), _thaw(spec.learn))
            if repr(key) in seen:
                self.fail(f"methods[{index}]", f"same method and settings as methods[{seen[repr(key)]}]")
            seen[repr(key)] = index
        return specs

    def method(self, value: Any, key: str, transfer: TransferSpec) -> MethodSpec:
        data = self.mapping(value, key, ["name", "presets", "loss_weights", "learn", "resources"])
        if "name" not in data:
            self.fail(f"{key}.name", "missing (required)")
        name = self.string(data["name"], f"{key}.name")
        known = method_registry.available_methods()
        if name not in known:
            self.fail(f"{key}.name", f"unknown method {name!r} (known: {', '.join(known)})")
        try:
            method_class = method_registry.method_class(name)
            known_presets = method_registry.method_presets(name)
        except Exception as err:  # the method's module failed to import: say so instead of a traceback
            self.fail(
                f"{key}.name", f"method {name!r} cannot be loaded ({type(err).__name__}: {' '.join(str(err).split())})"
            )
        presets = self.presets(data.get("presets"), f"{key}.presets", name, method_class, known_presets)
        loss_weights = self.loss_weights(
            data.get("loss_weights", {}), f"{key}.loss_weights", method_class, data.get("learn")
        )
        learn = self.learn(data.get("learn", {}), f"{key}.learn", method_class)
        return MethodSpec(
            name,
            presets,
            _freeze(loss_weights),
            _freeze(learn),
            self.method_resources(data.get("resources", {}), f"{key}.resources"),
        )

    def method_resources(self, value: Any, key: str) -> Mapping[str, float]:
        """A method entry's own ``num_gpus`` / ``num_cpus`` per job (instead of the suite's ``resources``)."""
        data = self.mapping(value, key, ["num_gpus", "num_cpus"])
        resources = {}
        if "num_gpus" in data:
            resources["num_gpus"] = self.number(data["num_gpus"], f"{key}.num_gpus", minimum=0.0)
        if "num_cpus" in data:
            resources["num_cpus"] = self.number(data["num_cpus"], f"{key}.num_cpus", positive=True)
        return MappingProxyType(resources)

    def presets(self, value: Any, key: str, method: str, method_class: type, known: list[str]) -> tuple[str, ...]:
        if value is None:
            default = getattr(method_class, "default_preset", None)
            if default in known:
                return (default,)
            if len(known) == 1:
                return (known[0],)
            self.fail(key, f"missing: method {method!r} has several presets ({', '.join(known)}) and no default")
        presets = self.strings(value, key)
        for index, preset in enumerate(presets):
            if preset not in known:
                self.fail(
                    f"{key}[{index}]", f"unknown preset {preset!r} for method {method!r} (known: {', '.join(known)})"
                )
        return presets

    def loss_weights(self, value: Any, key: str, method_class: type, learn: Any) -> dict[str, float]:
        known = self.known_terms(method_class, learn)
        data = self.mapping(value, key, known)
        return {term: self.number(weight, f"{key}.{term}", minimum=0.0) for term, weight in data.items()}

    @staticmethod
    def known_terms(method_class: type, learn: Any) -> list[str] | None:
        """Loss terms a weight may name, or None when the method does not say (no LearnConfig)."""
        base = getattr(method_class, "base_config", None)
        if base is None or not hasattr(base, "terms"):
            return None
        from clic.losses import TERMS  # the method's module has imported torch already

        names = set(TERMS) | set(base.terms)
        for preset in getattr(method_class, "presets", {}).values():
            names |= set((preset.get("learn") or {}).get("terms") or {})
        if isinstance(learn, Mapping) and isinstance(learn.get("terms"), Mapping):
            names |= set(learn["terms"])
        return sorted(names)

    def learn(self, value: Any, key: str, method_class: type) -> dict[str, Any]:
        base = getattr(method_class, "base_config", None)
        allowed = [f.name for f in dataclasses.fields(base)] if dataclasses.is_dataclass(base) else None
        data = dict(self.mapping(value, key, allowed))
        self.finite_everywhere(data, key)
        if "steps" in data:
            self.steps(data["steps"], f"{key}.steps")
        if "lr" in data:
            self.number(data["lr"], f"{key}.lr", positive=True)
        if data.get("resolution") is not None:
            self.resolution(data["resolution"], f"{key}.resolution", minimum=1)
        return data
