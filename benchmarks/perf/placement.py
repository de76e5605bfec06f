"""Placement audit: every aten op whose tensor inputs sit on two devices is recorded.

Used by ``tests/clic/test_placement.py`` (model on PyTorch's data-less ``meta`` device) and by the doctor
(``python -m benchmarks.perf.doctor``: the model on the GPU found). Two things a data-less device cannot do are
answered by the audit and are not placement errors: reading a scalar out of a meta tensor (the loops read loss
values to log them) gives 1, and copying a meta tensor to the CPU (results are returned on the CPU) gives zeros
of the right shape. Transfers (``.to(device)``) are what correct code does and are not recorded; nor is a 0-dim
CPU tensor, a scalar PyTorch accepts beside any device.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
TRANSFERS = {
    aten._to_copy.default,
    aten.copy_.default,
    aten._copy_from.default,
    aten._copy_from_and_resize.default,
    aten.to.dtype_layout,
    aten.to.device,
    aten.to.dtype,
}


class DeviceAudit(TorchDispatchMode):
    """Record every aten op whose (non-scalar) tensor inputs are on more than one device."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        self.ops += 1
        if func is aten._local_scalar_dense.default and tensors[0].is_meta:
            return True if tensors[0].dtype == torch.bool else 1
        if (
            func is aten._to_copy.default
            and tensors[0].is_meta
            and kwargs.get("device") is not None
            and torch.device(kwargs["device"]).type != "meta"
        ):
            return torch.zeros(tensors[0].shape, dtype=kwargs.get("dtype") or tensors[0].dtype, device=kwargs["device"])
        if func not in TRANSFERS:
            devices = {t.device.type for t in tensors if not (t.dim() == 0 and t.device.type == "cpu")}
            if len(devices) > 1:
                self.mixed.append(f"{func}: {sorted(devices)} {[tuple(t.shape) for t in tensors]}")
        return func(*args, **kwargs)
