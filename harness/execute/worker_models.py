"""A worker's models: the checkpoint the driver planned with, loaded once per worker process and device and lent
to each job (clic.reuse), the peak-memory window of a job, and the warm-up before the first job arrives."""

from __future__ import annotations

import time
from typing import Any

from ..plan.jobs import ModelInfo


def node_id() -> str:
    """The Ray node this worker runs on (recorded with each job)."""
    import ray

    return ray.get_runtime_context().get_node_id()


_LENDERS: dict[tuple[str, str, str], Any] = {}  # per worker process: (model, device, dtype) -> clic.reuse.ModelLender


def fresh_components(model: ModelInfo):
    """Components to apply one concept to: the checkpoint is loaded once per worker process and device and
    lent to each job; the next loan puts back what the last job changed (clic.reuse), instead of a copy of
    the UNet and text encoder per job. ``auto`` is the GPU Ray assigned this task, else the CPU."""
    from clic.device import resolve_device
    from clic.reuse import ModelLender

    device = str(resolve_device(model.device))
    key = (model.model_id, device, model.dtype)
    if key not in _LENDERS:
        for other in [k for k in _LENDERS if k[1] == device]:  # one model per worker per device
            del _LENDERS[other]
        _LENDERS[key] = ModelLender(lambda: _load_planned(model, device))
    return _LENDERS[key].lend()


def _load_planned(model: ModelInfo, device: str):
    """The model the driver planned with: its weights hash is part of every job's id, so a worker whose
    weights differ (a checkpoint replaced mid-run, another library version on this node) refuses to run."""
    from clic.models import load_components

    components = load_components(model.model_id, device=device, dtype=model.dtype)
    if model.weights_hash and components.weights_hash != model.weights_hash:
        raise RuntimeError(
            f"{model.model_id}: the weights on this worker (hash {components.weights_hash}) are not "
            f"the ones the run was planned with ({model.weights_hash}); start the run again"
        )
    return components


def job_peak_memory_mb(device: str | None) -> float:
    """The job's peak memory since :func:`start_memory_window`, in MB."""
    from clic.device import peak_memory_bytes

    return round(peak_memory_bytes(device) / 2**20, 1)


def start_memory_window(model: ModelInfo | None) -> str:
    """Reset the peak-memory counter for a job: CUDA max allocated on a GPU, peak RSS on the CPU."""
    from clic.device import reset_peak_memory, resolve_device

    device = str(resolve_device(model.device)) if model else "cpu"
    reset_peak_memory(device)
    return device


def warm_worker(model: ModelInfo | None, method_targets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Import the run's methods ("module:Class") and load the model into this worker's cache before jobs
    arrive, while the driver plans and starts the metric actor (a worker's first import of torch/diffusers
    takes seconds). Returns its node and the seconds it took: the run's cold start, reported apart from the
    per-job overhead."""
    from clic.methods import method_from_target

    started = time.perf_counter()
    for target in method_targets:
        method_from_target(target)
    if model:
        fresh_components(model)
    return {"node_id": node_id(), "seconds": time.perf_counter() - started}
