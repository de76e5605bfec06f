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
    "fault_injection": "clic.methods.fault_injection:FaultInjection",  # TEST ONLY: kills/fails on purpose
}


def available_methods() -> list[str]:
    return sorted(REGISTRY)


def method_class(name: str) -> type:
    """The method class registered under ``name`` (ValueError naming the known methods otherwise)."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(available_methods())}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def method_presets(name: str) -> list[str]:
    """Names of the presets (named configs) of a method."""
    return sorted(method_class(name).presets)
