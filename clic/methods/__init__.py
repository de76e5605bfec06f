"""Method registry: name -> "module:Class". Adding a method is one file plus one line here."""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "clic": "clic.methods.clic:CLiC",
    "cut_paste": "clic.methods.cut_paste:CutPaste",
    "custom_diffusion": "clic.methods.custom_diffusion:CustomDiffusion",
    "break_a_scene": "clic.methods.break_a_scene:BreakAScene",
    "realfill": "clic.methods.realfill:RealFill",
    "textual_inversion": "clic.methods.textual_inversion:TextualInversion",
    "em_masks": "clic.methods.em_masks:EMMasks",
    "concept_express": "clic.methods.concept_express:ConceptExpress",
    "single_insert": "clic.methods.single_insert:SingleInsert",
}


def available_methods() -> list[str]:
    return sorted(REGISTRY)


def register_method(name: str, target: str) -> None:
    """Register a method defined outside this package (a plugin, or a test's toy method) as "module:Class".
    A run resolves each method's target once, at plan time, and its jobs carry it to the workers."""
    REGISTRY[name] = target


def method_target(name: str) -> str:
    """The "module:Class" registered under ``name`` (ValueError naming the known methods otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(available_methods())}") from None


def method_from_target(target: str) -> type:
    """The method class at "module:Class"."""
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def method_class(name: str) -> type:
    """The method class registered under ``name`` (ValueError naming the known methods otherwise)."""
    return method_from_target(method_target(name))


def method_presets(name: str) -> list[str]:
    """Names of the presets (named configs) of a method."""
    return sorted(method_class(name).presets)
