"""Resources per method: how many GPUs (a fraction packs several jobs on one) and CPUs each method's jobs ask for.

Per method and preset, the first that applies:

1. the suite's method entry ``resources: {num_gpus, num_cpus}``;
2. with ``resources.gpu_memory_gib`` (one GPU's memory) and GPU jobs (``resources.num_gpus`` > 0), a method that
   declares its expected peak memory (``clic.methods.base.Method.gpu_memory``, at the run's resolution and dtype)
   gets ``1/k`` of a GPU, ``k`` the number of its jobs that fit on one card (a whole GPU when one does not fit:
   an out-of-memory error is then retried, harness.execute.run_folder);
3. the suite's ``resources``.

So CLiC at 512 px in fp32 (7.1 GiB) packs two per 16 GB card while Break-A-Scene ``original`` (≈ 17.8 GiB) takes a
whole 24 GB card, in one run. Pure: the runner turns these into Ray options.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..plan.suite_model import Suite


def gpus_for_memory(expected_gib: float, gpu_memory_gib: float) -> float:
    """The GPU fraction of a job expected to peak at ``expected_gib`` on a card of ``gpu_memory_gib``: ``1/k`` with
    ``k`` jobs fitting on the card (1 when even one does not fit)."""
    fitting = math.floor(gpu_memory_gib / expected_gib) if expected_gib > 0 else 1
    return 1.0 / max(1, fitting)


def method_resources(suite: Suite, resolution: int) -> dict[tuple[str, str], dict[str, Any]]:
    """(method, preset) -> ``{"num_gpus", "num_cpus", "expected_gpu_memory_gib", "why"}`` for every method run."""
    from clic.methods import method_class

    base = suite.resources
    packed: dict[tuple[str, str], dict[str, Any]] = {}
    for spec in suite.methods:
        method = method_class(spec.name)()
        for preset in spec.presets:
            expected = method.expected_gpu_memory_gib(preset, resolution, suite.dtype)
            entry = {
                "num_gpus": base.num_gpus,
                "num_cpus": base.num_cpus,
                "expected_gpu_memory_gib": None if expected is None else round(expected, 2),
                "why": "the suite's resources",
            }
            if spec.resources:
                entry.update(spec.resources, why=f"the method entry's resources ({spec.name})")
            elif expected is not None and base.num_gpus > 0 and base.gpu_memory_gib:
                entry.update(
                    num_gpus=gpus_for_memory(expected, base.gpu_memory_gib),
                    why=f"expected {expected:.1f} GiB at {resolution} px {suite.dtype} on a "
                    f"{base.gpu_memory_gib:g} GiB GPU",
                )
            packed[(spec.name, preset)] = entry
    return packed
