"""A method run's name in every table, decided once at plan time: ``label`` = "method/preset", plus a
``variant`` that names what sets one resolved configuration apart from the others of its method and preset:
"no_att" when suite entries differ in their learning overrides (the ablations of benchmarks/ablations.yaml),
"t_start=4" for a point of a swept task setting. Jobs carry both; result rows store them as columns, so every
table groups by them (seeds are replicates inside a variant, never a variant), and the report and the study
read them instead of re-deriving them from the settings JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..store import canonical_json

if TYPE_CHECKING:
    from .jobs import MethodRun


def method_label(method: object, preset: object, variant: object = "") -> str:
    """ "clic/paper", "clic/paper no_att" (a variant), or the method's name when it has no preset."""
    label = f"{method}/{preset}" if isinstance(preset, str) and preset else str(method)
    return f"{label} {variant}" if isinstance(variant, str) and variant else label


def _term_weight(spec: Any) -> Any:
    """A loss term's weight: the term is given as a bare weight or as {"weight": w, ...}."""
    return spec.get("weight") if isinstance(spec, Mapping) else spec


def _compact(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):.4g}"
    return canonical_json(value)


def _common_overrides(variants: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The overrides (and loss terms) that every variant has with the same value."""
    first, rest = variants[0], variants[1:]
    common = {
        key: value
        for key, value in first.items()
        if key != "terms" and all(key in other and other[key] == value for other in rest)
    }
    terms = first.get("terms") or {}
    common["terms"] = {
        term: spec
        for term, spec in terms.items()
        if all((other.get("terms") or {}).get(term) == spec for other in rest)
    }
    return common


def variant_name(learn: Mapping[str, Any], common: Mapping[str, Any]) -> str:
    """What sets the overrides `learn` apart from `common`: "no_att" for a zero-weight term, else key=value."""
    parts = []
    for key, value in sorted(learn.items()):
        if key == "terms" and isinstance(value, Mapping):
            shared = common.get("terms") or {}
            parts += [
                f"no_{term}" if _term_weight(spec) == 0 else f"{term}={_compact(spec)}"
                for term, spec in sorted(value.items())
                if not (term in shared and shared[term] == spec)
            ]
        elif not (key in common and common[key] == value):
            parts.append(f"{key}={_compact(value)}")
    return " ".join(parts)


def with_labels(methods: Sequence[MethodRun]) -> list[MethodRun]:
    """``methods`` (in suite order) with ``variant`` and ``label`` set. A method and preset run with one set
    of overrides has no variant, so ordinary runs keep their plain labels."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in methods:
        distinct = groups.setdefault((run.name, run.preset), [])
        if dict(run.learn) not in distinct:
            distinct.append(dict(run.learn))
    labelled = []
    for run in methods:
        distinct = groups[(run.name, run.preset)]
        variant = variant_name(run.learn, _common_overrides(distinct)) if len(distinct) > 1 else ""
        labelled.append(dataclasses.replace(run, variant=variant, label=method_label(run.name, run.preset, variant)))
    return labelled


def varying_keys(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys (sorted) whose value differs between ``points`` (a key missing from a point counts as None)."""
    keys = sorted({k for point in points for k in point})
    return [k for k in keys if len({canonical_json(point.get(k)) for point in points}) > 1]


def sweep_variants(resolved: Sequence[Mapping[str, Any] | None], ignore: Sequence[str] = ()) -> list[str]:
    """Variant names of a method run's resolved settings at each point of a sweep: the ``key=value`` pairs of the
    keys whose resolved value differs between points ("t_start=4 eta=0.5"), "" for all when they are one
    configuration. ``ignore``: keys that are data rather than settings (a generation's prompt)."""
    present = [dict(r) for r in resolved if r is not None]
    if len(present) < 2:
        return ["" for _ in resolved]
    varying = [k for k in varying_keys(present) if k not in ignore]
    return [" ".join(f"{k}={_compact(r.get(k))}" for k in varying) if r is not None else "" for r in resolved]
