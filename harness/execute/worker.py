"""The worker side of a run: Ray tasks that learn a concept and run one task job on it, in worker processes
that keep the model loaded between jobs. They write artifacts and return small records plus the metric
samples (which go from the worker to the metric actor as an object ref, never through the driver)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..plan.jobs import LearnNode, ModelInfo, TaskJob


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _readable(location: str):
    """A manifest location as ``clic.io`` reads it: a local path as it is, a URI (``s3://`` …) as its bytes
    (harness.plan.locations: bounded in time and size, one line when the scheme's package is missing)."""
    from ..plan.locations import is_uri, open_location

    return open_location(location) if is_uri(location) else location


def load_image(location: str):
    from clic.io import load_image as load

    return load(_readable(location), name=location)


def load_mask(location: str, size: tuple[int, int] | None = None):
    from clic.io import load_mask as load

    return load(_readable(location), size=size, name=location)


def _model_input(image_path: str, mask_path: str | None, resolution: int):
    from clic.io import to_model_input

    image = load_image(image_path)
    mask = load_mask(mask_path, size=image.size) if mask_path else None
    return image, mask, to_model_input(image, mask, resolution)


def _as_float_image(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


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
    return {"node_id": _node_id(), "seconds": time.perf_counter() - started}


def learn_concept_task(node: LearnNode, concepts_root: str, remote: str | None = None) -> dict[str, Any]:
    """Learn one concept into concepts/<concept_id> unless a complete folder is already there. With ``remote``
    (a run folder on object storage, ``concepts_root`` in its staging folder) a concept the prefix holds is
    downloaded instead, and a learned one is uploaded (harness.remote_folder)."""
    from clic.learn import ConceptSource
    from clic.methods import method_from_target

    final = Path(concepts_root) / node.concept_id
    relearned = None
    if remote and not store.concept_is_complete(final):
        from ..remote_folder import fetch_concept

        fetch_concept(remote, Path(concepts_root).parent, final)
    if store.concept_is_complete(final):
        from clic.cli_checks import concept_problem

        relearned = concept_problem(final)  # e.g. a weight file truncated by a full disk
        if relearned is None:
            return {"folder": str(final), "seconds": 0.0, "learned": False, "node_id": _node_id()}
        store.publish_folder(final, store.temp_sibling(final))  # moved aside (then cleaned as a stale temp)
    start = time.perf_counter()
    memory_device = start_memory_window(node.model)
    method = method_from_target(node.method_target)()
    _, _, (image, mask, _) = _model_input(node.source_image, node.source_mask, node.resolution)
    estimated = None
    if mask is None:
        mask, estimated = _mask_for_unmasked_source(method, node, image)
    components = fresh_components(node.model) if node.model else None
    temp = _learning_folder(method, node, final)
    method.learn(
        components,
        ConceptSource(image, mask, node.object_word),
        preset=node.preset,
        overrides=node.learn,
        seed=node.seed,
        out_dir=temp,
        progress=False,
    )  # resolved by the plan
    resumed_from = _resumed_from_step(temp)
    if estimated is not None:  # kept with the concept, where the estimated-mask metric reads it
        from clic.concept import LearnedConcept

        concept = LearnedConcept.load(temp)
        concept.arrays["estimated_mask_0"] = estimated
        concept.save(temp)
    store.publish_folder(temp, final)
    if remote:  # concept.json, the completion marker, last
        from ..remote_folder import upload_folder

        upload_folder(remote, Path(concepts_root).parent, final, last="concept.json")
    return {
        "folder": str(final),
        "seconds": time.perf_counter() - start,
        "learned": True,
        "node_id": _node_id(),
        "peak_memory_mb": job_peak_memory_mb(memory_device),
        "relearned": relearned,
        "resumed_from_step": resumed_from,
    }


LEARNING_PREFIX = ".learning-"


def _learning_folder(method, node: LearnNode, final: Path) -> Path:
    """Where the concept is written before it is published: a fresh temporary folder, or, when the learn takes
    resumable snapshots (``checkpoint_every``), ``concepts/.learning-<concept id>``, the same for every attempt
    (a retry after a killed worker, or the next run) so that the learn resumes from its newest snapshot
    (clic.learn.latest_resume_state). One attempt at a time: the scheduler submits one learn per concept and the
    run folder's lock one run per folder."""
    checkpoint_every = int(getattr(node.learn, "checkpoint_every", 0) or 0)  # the plan's resolved config
    if not checkpoint_every:
        return store.temp_sibling(final)
    folder = final.with_name(f"{LEARNING_PREFIX}{final.name}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _resumed_from_step(folder: Path) -> int | None:
    import json

    try:
        return json.loads((folder / "concept.json").read_text()).get("extras", {}).get("resumed_from_step")
    except (OSError, ValueError):
        return None


def _mask_for_unmasked_source(method, node: LearnNode, image):
    """The learning mask of a manifest row without ``source_mask`` (and the estimate to keep, if any).

    Methods that estimate their own masks get a whole-image placeholder; methods with RoI matching (CLiC)
    get the automatic source mask of the paper (§3.3), learned on fresh components; others cannot learn.
    """
    import torch

    if method.estimates_masks:
        return torch.ones(1, *image.shape[-2:]), None
    if not method.supports("match") or node.model is None:
        raise ValueError(f"{node.source_image}: no source mask, and method {node.method!r} cannot estimate one")
    from clic.match import automatic_source_mask

    soft, binary = automatic_source_mask(
        fresh_components(node.model), image[None], node.object_word, node.mask_settings, seed=node.seed
    )
    if not binary.any():
        raise ValueError(f"{node.source_image}: the automatic source mask is empty")
    return binary[0:1].float(), soft[0].float()


def _save_png(image, path: Path) -> None:
    """Write a PIL image atomically: a killed or retried worker never leaves a half PNG under the real name,
    and a rerun of the job replaces the file whole."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    store.write_bytes_atomic(path, buffer.getvalue())


def _save_map(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    array = np.asarray(array, dtype=np.float32)
    if array.max() > 0:
        array = array / array.max()
    _save_png(Image.fromarray((array.clip(0, 1) * 255).round().astype(np.uint8), mode="L"), path)


@dataclasses.dataclass
class _JobContext:
    """What one task job's steps share: the method, its learned concept and components, the artifact folder."""

    job: TaskJob
    method: Any
    learned: Any
    components: Any
    concept_folder: str
    model: ModelInfo | None
    out: Path


def run_task_job(
    job: TaskJob,
    concept: Mapping[str, Any],
    model: ModelInfo | None,
    resolution: int,
    run_dir: str,
    remote: str | None = None,
) -> tuple[dict[str, Any], list]:
    """Run one task job on its learned concept and write its artifacts. Returns two Ray objects: a small
    record for the driver (artifacts, timings, node) and the metric samples, which the driver hands to the
    metric actor as an object ref without fetching them. With ``remote`` (a run folder on object storage,
    ``run_dir`` its staging folder) a concept learned on another node is downloaded first and the artifacts
    are uploaded before the job returns (harness.remote_folder)."""
    from clic.concept import LearnedConcept
    from clic.methods import method_from_target

    if remote and not store.concept_is_complete(concept["folder"]):
        from ..remote_folder import fetch_concept

        if not fetch_concept(remote, run_dir, Path(concept["folder"])):
            raise FileNotFoundError(f"{remote}/{store.CONCEPTS_DIR}/{job.concept_id}: the learned concept is not there")
    start = time.perf_counter()
    memory_device = start_memory_window(model)
    # Fresh components per job: applying a concept mutates them (tokens, attention processors).
    context = _JobContext(
        job,
        method_from_target(job.method_target)(),
        LearnedConcept.load(concept["folder"]),
        fresh_components(model) if model else None,
        concept["folder"],
        model,
        store.artifact_dir(run_dir, job.job_id),
    )
    context.out.mkdir(parents=True, exist_ok=True)
    sample, target = _base_sample(job, context.learned, resolution)
    if job.task == "transfer":
        samples, artifacts = _transfer(context, sample, target)
    elif job.task == "generate":
        samples, artifacts = _generate(context, sample)
    else:
        samples, artifacts = _match(context, sample, target)
    prefix = Path(store.ARTIFACTS_DIR) / job.job_id
    artifact_paths = {key: str(prefix / name) for key, name in artifacts.items()}
    losses = Path(concept["folder"]) / "losses.csv"
    if losses.is_file():
        artifact_paths["artifact_losses"] = str(Path(store.CONCEPTS_DIR) / job.concept_id / losses.name)
    if remote:
        from ..remote_folder import upload_folder

        upload_folder(remote, run_dir, context.out)
    record = {
        "artifacts": artifact_paths,
        "task_seconds": time.perf_counter() - start,
        "learn_seconds": float(concept["seconds"]),
        "node_id": _node_id(),
        "peak_memory_mb": job_peak_memory_mb(memory_device),
        "learn_peak_memory_mb": concept.get("peak_memory_mb"),
    }
    return record, samples


def _base_sample(job: TaskJob, learned: Any, resolution: int) -> tuple[Any, tuple | None]:
    """The job's sample before the method runs (source, estimated masks, target and its ground truth), and
    the target's model input (image, mask, placement) for transfers and matches."""
    from clic.io import mask_from_model_output

    from ..metrics.base import Sample

    sample = Sample(job_id=job.job_id, task=job.task, object_word=job.object_word)
    source, source_mask, (_, _, source_placement) = _model_input(job.source_image, job.source_mask, resolution)
    sample.source_image = _as_float_image(source)
    sample.source_mask = source_mask
    # Masks the method estimated itself (EM, ConceptExpress, CLiC's automatic source mask), at source size.
    sample.estimated_masks = [
        mask_from_model_output(learned.arrays[key].numpy() >= 0.5, source_placement)
        for key in sorted(learned.arrays)
        if key.startswith("estimated_mask")
    ] or None
    if job.task not in ("transfer", "match"):
        return sample, None
    target, target_mask, model_input = _model_input(job.target_image, job.target_mask, resolution)
    sample.target_image = _as_float_image(target)
    sample.target_mask = target_mask
    if job.target_mask_gt:
        sample.gt_mask = load_mask(job.target_mask_gt, size=target.size)
    if job.expected_image:
        sample.expected_image = _as_float_image(load_image(job.expected_image).resize(target.size))
    return sample, model_input


def _transfer(context: _JobContext, sample: Any, target: tuple) -> tuple[list, dict[str, str]]:
    from PIL import Image

    from clic.concept import LearnedConcept
    from clic.io import from_model_output, mask_from_model_output
    from clic.transfer import TransferResult

    job, method, (image, mask, placement) = context.job, context.method, target
    target_mask = sample.target_mask
    if mask is None:  # no target mask in the manifest: RoI matching predicts it first
        matched = method.match(
            context.components,
            context.learned,
            image,
            job.object_word,
            preset=job.preset,
            overrides=job.match,
            seed=job.seed,
        )
        mask = matched.mask[None].float()
        target_mask = mask_from_model_output(matched.mask, placement)
        sample.target_mask = target_mask
        context.learned = LearnedConcept.load(context.concept_folder)
        context.components = fresh_components(context.model)
    result = method.transfer(
        context.components,
        context.learned,
        image,
        mask[0],
        job.object_word,
        preset=job.preset,
        overrides=job.settings,
        seed=job.seed,
    )
    edited = from_model_output(result.image, placement)
    sample.output_image = _as_float_image(edited)
    _save_png(edited, context.out / "edited.png")
    attention = result.attention.detach().cpu().numpy()
    _save_map(attention, context.out / "attention.png")
    sample.attention = _map_at_original_size(attention, placement)
    _save_png(Image.fromarray(target_mask.astype(np.uint8) * 255), context.out / "mask.png")
    if isinstance(result, TransferResult):  # CLiC's loop: which timesteps it ran (first timestep, steps run)
        (context.out / "transfer.json").write_text(json.dumps(result.schedule_record()))
    return [sample], {
        "artifact_image": "edited.png",
        "artifact_attention": "attention.png",
        "artifact_mask": "mask.png",
    }


def _map_at_original_size(values: np.ndarray, placement: Any) -> np.ndarray:
    """A square float map at model resolution, resized (bilinear) to the image's original size as the edited
    image is (:func:`clic.io.from_model_output`)."""
    from PIL import Image

    square = Image.fromarray(np.asarray(values, dtype=np.float32))
    resized = square.resize(placement.original_size, Image.Resampling.BILINEAR, box=placement.box_at(values.shape[0]))
    return np.asarray(resized, dtype=np.float32)


def _generate(context: _JobContext, sample: Any) -> tuple[list, dict[str, str]]:
    from PIL import Image

    job = context.job
    result = context.method.generate(
        context.components, context.learned, job.object_word, preset=job.preset, overrides=job.settings, seed=job.seed
    )
    sample.prompt = result.prompt
    images = result.images.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32)
    samples = []
    for index, image in enumerate(images):  # every image is scored; the job's value is their mean
        _save_png(
            Image.fromarray((image * 255).round().astype(np.uint8)), context.out / store.generated_image_name(index)
        )
        samples.append(dataclasses.replace(sample, output_image=image))
    artifacts = {"artifact_image": store.generated_image_name(0)}
    if result.attention is not None:
        _save_map(result.attention[0].detach().cpu().numpy(), context.out / "attention.png")
        artifacts["artifact_attention"] = "attention.png"
    return samples, artifacts


def _match(context: _JobContext, sample: Any, target: tuple) -> tuple[list, dict[str, str]]:
    from PIL import Image

    from clic.io import mask_from_model_output

    job, (image, _, placement) = context.job, target
    result = context.method.match(
        context.components,
        context.learned,
        image,
        job.object_word,
        preset=job.preset,
        overrides=job.settings,
        seed=job.seed,
    )
    sample.predicted_mask = mask_from_model_output(result.mask, placement)
    _save_png(Image.fromarray(sample.predicted_mask.astype(np.uint8) * 255), context.out / "mask.png")
    return [sample], {"artifact_mask": "mask.png"}


def generated_images(run_dir: str | Path, job_id: str) -> list[Path]:
    """A finished generate job's images, in order."""
    folder = store.artifact_dir(run_dir, job_id)
    paths = []
    while (folder / store.generated_image_name(len(paths))).is_file():
        paths.append(folder / store.generated_image_name(len(paths)))
    return paths
