"""Where the model runs and in what precision: ``--device auto|cpu|cuda[:N]``, ``--dtype fp32|fp16|bf16``.

The rule the loops follow: the model's components are moved once (:func:`clic.models.load_components`), and
every tensor ``clic`` creates afterwards takes its device and dtype from the model. Random draws are the one
exception on purpose: they come from a CPU ``torch.Generator`` and are moved afterwards, so one seed gives the
same noise on every machine (a CUDA generator gives another stream than the CPU one).

Trained parameters (token vectors, attention copies, LoRA) keep fp32 master weights whatever the model's
dtype; the frozen model runs in the requested dtype.
"""

from __future__ import annotations

import os
import resource
import sys

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
DEVICE_HELP = "auto (a GPU if one is visible, e.g. the one Ray assigned, else the CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given.

    In a Ray task or actor that reserved a GPU, Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU(s) it assigned
    (and to nothing for a task that asked for none), so ``auto`` there is exactly the assigned GPU.
    Raises ``ValueError`` with one line for an unknown name or a GPU this machine does not have.
    """
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu" or text == "meta":  # meta: shapes only, used by the placement test
        return torch.device(text)
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: no CUDA GPU is visible on this machine (use auto or cpu)")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    raise ValueError(f"unknown device {spec!r}; use {DEVICE_HELP}")


def resolve_dtype(spec: str | torch.dtype | None = "fp32") -> torch.dtype:
    if isinstance(spec, torch.dtype):
        if spec not in DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {spec}; use one of {', '.join(DTYPES)}")
        return spec
    text = (spec or "fp32").strip().lower()
    if text not in DTYPES:
        raise ValueError(f"unknown dtype {spec!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[text]


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def autocast_dtype(model_dtype: torch.dtype, mixed_precision: str = "no") -> torch.dtype | None:
    """The autocast dtype of a step: the configured mixed precision, else the model's own half dtype.

    A half-precision model trains fp32 master weights; autocast runs their matmuls in the model's dtype.
    """
    if mixed_precision in ("bf16", "fp16"):
        return DTYPES[mixed_precision]
    return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else None


# -------------------------------------------------------------------------------- peak memory
def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Start a new peak-memory window: CUDA's max-allocated counter, or the process's peak RSS on Linux
    (writing 5 to /proc/self/clear_refs resets VmHWM; elsewhere the window is the process's lifetime)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    """CUDA max allocated on a GPU; peak resident set size (VmHWM) of this process on the CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"
    return str(device)


def tf32_requested() -> bool:
    """TF32 is on unless ``CLIC_TF32=0`` (the harness sets it for a suite with ``tf32: false``)."""
    return os.environ.get("CLIC_TF32", "1").strip().lower() not in ("0", "false", "no", "off")


def configure_tf32(device: torch.device | str) -> bool:
    """Let fp32 matmuls and cuDNN convolutions use TF32 tensor cores on GPUs that have them (compute capability
    ≥ 8.0: Ampere and newer), as requested (:func:`tf32_requested`); True when TF32 is on for ``device``.
    PyTorch leaves matmul TF32 off by default; it speeds an fp32 SD step several-fold on an A100 at ~1e-3 relative
    precision per product (10-bit mantissa), which the losses' fp32 accumulation absorbs."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    capable = torch.cuda.get_device_capability(device)[0] >= 8
    enabled = capable and tf32_requested()
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled
