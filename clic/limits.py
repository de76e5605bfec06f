"""Bounds tied to what the model and the machine can do, in one place for `clic` and the suite reader alike.

* A DDIM schedule of ``steps`` steps takes ``steps`` distinct timesteps among the scheduler's
  ``num_train_timesteps`` (diffusers' ``DDIMScheduler.set_timesteps`` refuses more, deep inside a run): so
  ``steps ≤ num_train_timesteps`` (1000 for SD 1.x/2.x and the tiny models).
* Images of side R: the memory a run would need at least, against the machine's memory. The lower bound
  counts what certainly exists at once: every output image in fp32 (3·R² values each) and one VAE pass at
  full resolution, whose last decoder (first encoder) block holds two activations of ``MIN_VAE_CHANNELS``
  channels (the tiny VAE's 32; SD's has 128). It is a floor, not an estimate: a value it refuses cannot run
  here (``--resolution 100000`` would need terabytes), a value it passes may still be too large.
"""

from __future__ import annotations

import os
import sys

DEFAULT_TRAIN_TIMESTEPS = 1000  # SD 1.x/2.x scheduler_config.json num_train_timesteps
MIN_VAE_CHANNELS = 32  # the narrowest VAE block the supported models have at full resolution (tiny: 32, SD: 128)
FP32_BYTES = 4


def schedule_steps_problem(steps: int, train_timesteps: int = DEFAULT_TRAIN_TIMESTEPS) -> str | None:
    """None when a DDIM schedule of ``steps`` steps fits the scheduler, else why not (one line)."""
    if steps > train_timesteps:
        return (
            f"{steps} is more than the scheduler's num_train_timesteps {train_timesteps} (each DDIM step is a "
            f"distinct training timestep): use at most {train_timesteps}"
        )
    return None


def image_memory_bytes(resolution: int, images: int = 1) -> int:
    """The least memory ``images`` images of side ``resolution`` take in a run (see the module docstring)."""
    pixels = resolution * resolution
    return FP32_BYTES * pixels * (3 * images + 2 * MIN_VAE_CHANNELS)


def machine_memory_bytes() -> int:
    """The largest memory a run here can use: physical RAM, or a visible GPU's if larger (torch only if loaded)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound
        return sys.maxsize
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            memory = max(
                memory, *(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
            )
    except Exception:  # a broken CUDA setup is the device check's business, not this bound's
        pass
    return memory


def image_memory_problem(resolution: int, images: int = 1, memory: int | None = None) -> str | None:
    """None when ``images`` images of side ``resolution`` can fit this machine's memory, else why not."""
    memory = machine_memory_bytes() if memory is None else memory
    needed = image_memory_bytes(resolution, images)
    if needed <= memory:
        return None
    count = (
        f"{images} images of {resolution}x{resolution} px need"
        if images > 1
        else f"an image of {resolution}x{resolution} px needs"
    )
    return f"{count} at least {_gb(needed)} of memory, more than this machine has ({_gb(memory)})"


def _gb(size: int) -> str:
    return f"{size / 1024**3:,.0f} GB" if size >= 1024**3 else f"{size / 1024**2:,.0f} MB"
