"""The checks of a suite that ask the registries: metric names and their options (harness.metrics), method
names, presets, loss weights and ``learn`` keys (clic.methods), each against what the method or metric declares."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import clic.methods as method_registry

from .suite_model import DEFAULT_METRICS, MethodSpec, TransferSpec, freeze, thaw
from .suite_values import ValueChecks


class MethodChecks(ValueChecks):
    """Metric- and method-aware checks, on top of the generic value checks."""

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
            return freeze(data)
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
        return freeze(data)

    @staticmethod
    def with_world_models(
        options: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], model: Any
    ) -> Mapping[str, Mapping[str, Any]]:
        """On ``model: tiny-world``, the CLIP metrics score with the world scorer (clip.model: tiny-world) and the
        LPIPS metrics on its trunk (lpips.net: tiny-world), each unless the suite names another: a real CLIP knows
        nothing of the synthetic world's captions, and no AlexNet weights exist here (a random one measures
        nothing)."""
        from harness.metrics import metric_class
        from harness.metrics.options import WORLD_CLIP, WORLD_LPIPS_NET

        if model != WORLD_CLIP:
            return options
        world_defaults = {"clip": ("model", WORLD_CLIP), "lpips": ("net", WORLD_LPIPS_NET)}
        read = {family for name in metrics for family in (getattr(metric_class(name), "options", None) or {})}
        defaults = {
            family: {**dict(options.get(family, {})), key: value}
            for family, (key, value) in world_defaults.items()
            if family in read and key not in options.get(family, {})
        }
        return freeze({**thaw(options), **defaults}) if defaults else options

    # ------------------------------------------------------------------------------ methods
    def methods(self, value: Any, transfer: TransferSpec) -> tuple[MethodSpec, ...]:
        items = self.list_of(value, "methods", unique=False)
        specs = tuple(self.method(item, f"methods[{i}]", transfer) for i, item in enumerate(items))
        seen: dict[str, int] = {}
        for index, spec in enumerate(specs):
            key = (spec.name, spec.presets, thaw(spec.loss_weights), thaw(spec.learn))
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
            freeze(loss_weights),
            freeze(learn),
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
