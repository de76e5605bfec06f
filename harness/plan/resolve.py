"""From a checked suite to a plan: the methods' presets and overrides, the metrics' declarations, the models
each method runs on, and the good manifest rows. Everything here is decided once, before anything runs."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .identity import sweep_variants, varying_keys, with_labels
from .jobs import GROUP_KINDS, MethodRun, MetricInfo, ModelInfo, Pair, Plan, ResolvedRun, SweepPoint
from .suite_model import thaw

if TYPE_CHECKING:
    from .suite_model import Suite


def plan_from_suite(suite: Suite, resolution: int) -> Plan:
    """The job-graph plan of a checked suite (:class:`harness.plan.suite.Suite`) at an image resolution. The
    method runs carry the settings the suite reader resolved (:func:`resolve_runs`), not re-merged here."""
    from clic.methods import method_target

    from ..metrics import metric_class, metric_target
    from ..metrics.base import declaration

    runs = suite.runs or resolve_runs(suite)
    methods = []
    for spec, resolved in zip(suite.methods, runs):
        for preset, run in zip(spec.presets, resolved):
            learn = spec.learn_overrides(run.learn.terms if hasattr(run.learn, "terms") else None)
            methods.append(
                MethodRun(spec.name, preset, learn, method_target(spec.name), custom_term_sources(learn), resolved=run)
            )
    metrics = []
    for name in suite.metrics:
        cls = metric_class(name)
        declared = declaration(cls, suite.metric_options)
        if declared.group_by is not None and declared.group_by not in GROUP_KINDS:
            raise ValueError(f"metric {name!r}: group_by {declared.group_by!r} is not one of {GROUP_KINDS}")
        metrics.append(
            MetricInfo(
                name,
                declared.version,
                declared.scale,
                declared.tasks,
                declared.group_by,
                declared.values,
                metric_target(name),
                scoring_options(cls, suite.metric_options),
            )
        )
    return Plan(
        methods=with_labels(methods),
        seeds=list(suite.seeds),
        tasks=frozenset(suite.tasks),
        generate_objects=list(suite.generate.objects),
        match_missing_masks=suite.match.enabled,
        metrics=metrics,
        resolution=resolution,
        estimate_source_masks=suite.source_masks == "estimate",
    )


# Options that change how fast a metric scores, not what it scores: left out of the job ids.
NON_SCORING_OPTIONS = frozenset({"batch_size"})


def scoring_options(cls: type, metric_options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The suite's options of the families ``cls`` reads (``clip``, ``lpips``, ...) that can change its numbers."""
    chosen = {}
    for family in getattr(cls, "options", None) or {}:
        values = {k: v for k, v in thaw(metric_options.get(family, {})).items() if k not in NON_SCORING_OPTIONS}
        if values:
            chosen[family] = values
    return chosen


# ------------------------------------------------------------------------------------ resolution
def transfer_requests(suite: Suite) -> list[dict[str, Any]]:
    """The suite's transfer settings at each point of its sweep (t_start × eta); unset keys are left to presets."""
    spec = suite.transfer
    points = []
    for t_start, eta in itertools.product(spec.t_start or [None], spec.eta or [None]):
        point: dict[str, Any] = {"steps": spec.steps, "guidance_scale": spec.guidance_scale}
        if t_start is not None:
            point["t_start"] = int(t_start)
        if eta is not None:
            point["eta"] = float(eta)
        points.append(point)
    return points


def generate_requests(suite: Suite) -> list[dict[str, Any]]:
    """The suite's generation settings per prompt template (none given: each preset's own prompt)."""
    spec = suite.generate
    # unset stage_one_steps: each method's preset decides (e.g. SingleInsert's one-stage preset: 0)
    base = {
        "steps": spec.steps,
        "images": spec.images_per_seed,
        **({} if spec.stage_one_steps is None else {"stage_one_steps": spec.stage_one_steps}),
    }
    return [{**base, **({"prompt": prompt} if prompt is not None else {})} for prompt in (spec.prompts or [None])]


def match_request(suite: Suite) -> dict[str, Any]:
    return {"steps": suite.match.steps}


def _swept(requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each request cut to the keys that differ between requests (what the suite sweeps)."""
    varying = varying_keys(requests)
    return [{k: r.get(k) for k in varying} for r in requests]


def resolve_runs(
    suite: Suite, fail: Callable[[str, str], NoReturn] | None = None
) -> tuple[tuple[ResolvedRun, ...], ...]:
    """Each suite method × preset's learning config and task settings, resolved once through
    :meth:`clic.methods.base.Method.resolve` (the preset merged with the suite's values, typed, validated).
    ``fail(key, message)`` reports a setting no preset can run with (default: a ``SuiteError``)."""
    from clic.methods import method_class

    from ..errors import SuiteError

    def default_fail(key: str, message: str) -> NoReturn:
        raise SuiteError(f"{suite.source}: {key}: {message}")

    fail = fail or default_fail
    transfers, generations, match = transfer_requests(suite), generate_requests(suite), match_request(suite)
    transfer_sweeps, generate_sweeps = _swept(transfers), _swept(generations)
    resolved = []
    for index, spec in enumerate(suite.methods):
        method = method_class(spec.name)()
        per_preset = []
        for preset_index, preset in enumerate(spec.presets):
            run = _PresetResolver(suite, fail, method, spec, preset, preset_index, f"methods[{index}]")
            learn = run.learn()
            transfer = run.points("transfer", transfers, transfer_sweeps, "transfer")
            generate = run.points("generate", generations, generate_sweeps, "generate", ignore=("prompt",))
            per_preset.append(ResolvedRun(learn, transfer, generate, run.match(match)))
        resolved.append(tuple(per_preset))
    return tuple(resolved)


@dataclass(frozen=True)
class _PresetResolver:
    """One suite method entry's preset: its settings resolved by the method, each mistake one line naming it."""

    suite: Suite
    fail: Callable[[str, str], NoReturn]
    method: Any
    spec: Any  # harness.plan.suite_model.MethodSpec
    preset: str
    preset_index: int
    key: str  # methods[i]

    def learn(self) -> Any:
        from clic.losses import LossTermError

        spec, preset = self.spec, self.preset
        try:
            return self.method.resolve("learn", preset, spec.learn_overrides(self.method.preset_terms(preset)))
        except (ValueError, TypeError, KeyError) as err:
            where = "loss_weights" if spec.loss_weights and isinstance(err, LossTermError) else "learn"
            self.fail(f"{self.key}.{where}", f"with preset {preset!r}: {' '.join(str(err).split())}")

    def points(
        self,
        task: str,
        requests: list[dict[str, Any]],
        sweeps: list[dict[str, Any]],
        suite_key: str,
        ignore: Sequence[str] = (),
    ) -> tuple[SweepPoint, ...]:
        """The task's sweep points: each request resolved by the preset, named by what it varies."""
        method, preset = self.method, self.preset
        if task not in self.suite.tasks:
            return ()
        if not method.supports(task):  # its jobs are recorded as not applicable, with the reason
            return (SweepPoint({}, None),)
        settings = []
        for request in requests:
            try:
                settings.append(method.resolve(task, preset, request))
            except (ValueError, TypeError) as err:
                self.fail(
                    f"{self.key}.presets[{self.preset_index}]",
                    f"preset {preset!r} of method {self.spec.name!r} with {suite_key} {request}: "
                    f"{' '.join(str(err).split())} (change {suite_key} or the preset)",
                )
        names = sweep_variants([s.to_dict() if s is not None else None for s in settings], ignore)
        return tuple(SweepPoint(sweep, s, name) for sweep, s, name in zip(sweeps, settings, names))

    def match(self, request: dict[str, Any]) -> Any:
        """The RoI-matching settings, or None for a method without matching."""
        if not self.method.supports("match"):
            return None
        try:
            return self.method.resolve("match", self.preset, request)
        except (ValueError, TypeError) as err:
            self.fail("match", f"preset {self.preset!r} of method {self.spec.name!r}: {' '.join(str(err).split())}")


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


def _default_preset(method: str) -> str:
    from clic.methods import method_class

    return method_class(method).default_preset


def model_for(method_name: str, suite: Suite) -> str | None:
    """The model a method runs on: none for no-model methods, the inpainting model where needed."""
    from clic.methods import method_class

    cls = method_class(method_name)
    if not cls.needs_model:
        return None
    if cls.needs_inpainting:
        return suite.inpainting_model or ("tiny-inpaint" if suite.model == "tiny" else suite.model)
    return suite.model


def describe_models(suite: Suite) -> tuple[dict[str, ModelInfo | None], int]:
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
        by_method[spec.name] = (
            ModelInfo(d.model_id, d.weights_hash, d.weights_label, suite.dtype, suite.device) if d else None
        )
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


def load_pairs(suite: Suite, allow_outside: bool = False) -> list[Pair]:
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
