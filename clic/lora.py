"""LoRA adapters through peft, as diffusers' training scripts add them, and their clean removal.

:func:`add_lora` injects ``LoraConfig(r, lora_alpha, target_modules, lora_dropout)`` adapters into a network
(``add_adapter``, the diffusers / transformers PEFT integration); :func:`lora_state` reads them back in peft's
own key format; :func:`install_lora` puts saved adapters into fresh networks; :func:`remove_lora` takes the
adapter layers out of the module tree again (``recurse_remove_peft_layers``: each wrapped Linear is replaced by
its own base layer), so a model lent to a job (:mod:`clic.reuse`) has its own parameters, under their own names,
afterwards — ``delete_adapters`` alone leaves the wrappers (and renamed parameters) behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

LORA_ADAPTER = "concept"  # the adapter name a learned concept's LoRA gets
ARRAY_PREFIX = "lora/"  # adapter tensors inside LearnedConcept.arrays: "lora/<network>.<peft key>"


def add_lora(
    module: nn.Module,
    adapter: str,
    rank: int,
    alpha: float,
    targets: Sequence[str],
    dropout: float = 0.0,
    init: str | bool = True,
) -> list[nn.Parameter]:
    """Add one adapter to ``module`` (a diffusers UNet or a transformers text encoder); its parameters."""
    from peft import LoraConfig

    module.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout, init_lora_weights=init
        ),
        adapter_name=adapter,
    )
    return lora_parameters(module)


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in module.named_parameters() if "lora_" in name]


def lora_state(module: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors in peft's key format (``set_peft_model_state_dict`` reads them back)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(module, adapter_name=adapter).items()}


def has_lora(module: nn.Module) -> bool:
    """Any peft layer in ``module`` (read from the classes' modules: no peft import for a clean model)."""
    return any(type(m).__module__.startswith("peft.") for m in module.modules())


def remove_lora(module: nn.Module) -> bool:
    """Take every adapter layer out of ``module`` (the base layers come back, same tensors); True if any was."""
    if not has_lora(module):
        return False
    from diffusers.utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(module)
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False
    return True


def install_lora(
    networks: Mapping[str, nn.Module], arrays: Mapping[str, torch.Tensor], adapter: str, settings: Mapping[str, Any]
) -> bool:
    """Add the adapters saved in a concept's ``arrays`` (``lora/<network>.<key>``) to ``networks`` with the
    ``settings`` they were trained with (rank, alpha, targets); once per network. True if any was installed."""
    from peft import set_peft_model_state_dict

    installed = False
    for name, module in networks.items():
        prefix = f"{ARRAY_PREFIX}{name}."
        state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not state or adapter in (getattr(module, "peft_config", None) or {}):
            continue
        targets = settings["unet_targets"] if name == "unet" else settings["text_targets"]
        add_lora(module, adapter, int(settings["rank"]), float(settings["alpha"]), targets)
        device = next(module.parameters()).device
        set_peft_model_state_dict(module, {k: v.to(device) for k, v in state.items()}, adapter_name=adapter)
        module.set_adapter(adapter) if hasattr(module, "set_adapter") else None
        installed = True
    return installed
