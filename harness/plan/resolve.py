"""From a checked suite to a plan: the methods' presets and overrides, the metrics' declarations, the models
each method runs on, and the good manifest rows. Everything here is decided once, before anything runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .identity import with_labels
from .jobs import GROUP_KINDS, MethodRun, MetricInfo, ModelInfo, Pair, Plan

if TYPE_CHECKING:
    from .suite import Suite


def plan_from_suite(suite: "Suite", resolution: int) -> Plan:
    """The job-graph plan of a checked suite (:class:`harness.plan.suite.Suite`) at an image resolution."""
    from clic.methods import method_class, method_target

    from ..metrics import metric_class, metric_target
    from ..metrics.base import declaration

    methods = []
    for spec in suite.methods:
        for preset in spec.presets:
            base_terms = method_class(spec.name)().learn_config(preset).terms if hasattr(
                method_class(spec.name), "base_config") else None
            learn = spec.learn_overrides(base_terms)
            methods.append(MethodRun(spec.name, preset, learn, method_target(spec.name), custom_term_sources(learn)))
    metrics = []
    for name in suite.metrics:
        declared = declaration(metric_class(name))
        if declared.group_by is not None and declared.group_by not in GROUP_KINDS:
            raise ValueError(f"metric {name!r}: group_by {declared.group_by!r} is not one of {GROUP_KINDS}")
        metrics.append(MetricInfo(name, declared.version, declared.scale, declared.tasks, declared.group_by,
                                  declared.values, metric_target(name)))
    transfer, generate = suite.transfer, suite.generate
    generate_settings = {"steps": generate.steps, "images": generate.images_per_seed,
                         # unset: each method's preset decides (e.g. SingleInsert's one-stage preset: 0)
                         **({} if generate.stage_one_steps is None else {"stage_one_steps": generate.stage_one_steps})}
    if "generate" in suite.tasks:
        _check_generate_settings(suite, methods, generate_settings)
    return Plan(
        methods=with_labels(methods), seeds=list(suite.seeds), tasks=frozenset(suite.tasks),
        t_starts=list(transfer.t_start) if transfer.t_start is not None else [None],
        etas=list(transfer.eta) if transfer.eta is not None else [None],
        transfer_settings={"steps": transfer.steps, "guidance_scale": transfer.guidance_scale},
        generate_objects=list(generate.objects), generate_prompts=list(generate.prompts),
        generate_settings=generate_settings,
        match_missing_masks=suite.match.enabled, match_settings={"steps": suite.match.steps},
        metrics=metrics, resolution=resolution, estimate_source_masks=suite.source_masks == "estimate",
    )


def custom_term_sources(learn: Mapping[str, Any]) -> dict[str, str]:
    """term -> sha256 of the source file of each custom loss term (``fn: "pkg.module:function"``) in a method
    run's learning overrides. Read from disk every time (not cached): an edit between runs must show."""
    import hashlib
    import importlib.util

    sources = {}
    for term, spec in sorted((learn.get("terms") or {}).items()):
        if not isinstance(spec, Mapping) or not spec.get("fn"):
            continue
        module = str(spec["fn"]).partition(":")[0]
        found = importlib.util.find_spec(module)
        if found is None or not found.origin or not Path(found.origin).is_file():
            raise ValueError(f"loss term {term!r}: cannot find the source of module {module!r} (fn {spec['fn']!r})")
        sources[term] = hashlib.sha256(Path(found.origin).read_bytes()).hexdigest()
    return sources


def _check_generate_settings(suite: "Suite", methods: Sequence[MethodRun], settings: Mapping[str, Any]) -> None:
    """Each generating method's preset merged with the suite's generation settings must be valid: a suite
    whose generate.steps is shorter than a preset's stage one fails here, not in every generation job."""
    from clic.generate import GenerateSettings
    from clic.methods import method_class

    from .suite import SuiteError

    for run in methods:
        method = method_class(run.name)()
        if not method.supports("generate"):
            continue
        try:
            GenerateSettings.from_dict(method.task_settings("generate", run.preset, settings))
        except ValueError as error:
            raise SuiteError(f"{suite.source}: generate: {error} (method {run.name!r}, preset {run.preset!r}; "
                             f"set generate.stage_one_steps or raise generate.steps)") from None


def _default_preset(method: str) -> str:
    from clic.methods import method_class

    return method_class(method).default_preset


def model_for(method_name: str, suite: "Suite") -> str | None:
    """The model a method runs on: none for no-model methods, the inpainting model where needed."""
    from clic.methods import method_class

    cls = method_class(method_name)
    if not cls.needs_model:
        return None
    if cls.needs_inpainting:
        return suite.inpainting_model or ("tiny-inpaint" if suite.model == "tiny" else suite.model)
    return suite.model


def describe_models(suite: "Suite") -> tuple[dict[str, ModelInfo | None], int]:
    """Model identity per method (weights hash and label, without loading real weights) and the native
    resolution of the suite's main model."""
    from clic.models import describe_model

    descriptions = {}
    by_method: dict[str, ModelInfo | None] = {}
    for spec in suite.methods:
        model_id = model_for(spec.name, suite)
        if model_id is not None and model_id not in descriptions:
            descriptions[model_id] = describe_model(model_id)
        d = descriptions.get(model_id) if model_id else None
        by_method[spec.name] = ModelInfo(d.model_id, d.weights_hash, d.weights_label, suite.dtype, suite.device) \
            if d else None
    main = descriptions.get(suite.model) or describe_model(suite.model)
    return by_method, main.resolution


def method_tasks(plan: Plan) -> dict[str, frozenset[str]]:
    """The tasks each planned method supports."""
    from clic.methods import method_class

    tasks: dict[str, frozenset[str]] = {}
    for run in plan.methods:
        method = method_class(run.name)()
        tasks[run.name] = frozenset(t for t in ("transfer", "generate", "match") if method.supports(t))
    return tasks



def load_pairs(suite: "Suite", allow_outside: bool = False) -> list[Pair]:
    """The good rows of the suite's manifests (bad rows printed, one line each), filtered by category and
    cut at ``limit_pairs`` per manifest. A manifest that is unusable as a whole is a usage error."""
    from ..errors import UsageError
    from .manifest import load_manifest

    pairs: list[Pair] = []
    for manifest in suite.manifests:
        report = load_manifest(manifest, allow_outside=allow_outside)
        for problem in [*report.manifest_problems, *report.problems]:
            print(f"skipped: {problem}", file=sys.stderr)
        if not report.usable:
            raise UsageError(f"{manifest}: the manifest cannot be used (see the lines above)")
        specs = [spec for spec in report.rows if suite.categories is None or spec.category in suite.categories]
        pairs.extend(specs[: suite.limit_pairs] if suite.limit_pairs else specs)
    return pairs
