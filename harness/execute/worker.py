"""The worker side of a run: Ray tasks that learn a concept and run one task job on it, in worker processes
that keep the model loaded between jobs. They write artifacts and return small records plus the metric
samples (which go from the worker to the metric actor as an object ref, never through the driver).

This module runs one task job (transfer, generate, match); :mod:`.worker_learn` learns its concept,
:mod:`.worker_models` lends the model, :mod:`.worker_files` reads inputs and writes artifacts."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..plan.jobs import ModelInfo, TaskJob
from .worker_files import (
    as_float_image,
    load_image,
    load_mask,
    load_model_input,
    map_at_original_size,
    save_map,
    save_png,
)
from .worker_models import fresh_components, job_peak_memory_mb, node_id, start_memory_window


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
        "node_id": node_id(),
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
    source, source_mask, (_, _, source_placement) = load_model_input(job.source_image, job.source_mask, resolution)
    sample.source_image = as_float_image(source)
    sample.source_mask = source_mask
    # Masks the method estimated itself (EM, ConceptExpress, CLiC's automatic source mask), at source size.
    sample.estimated_masks = [
        mask_from_model_output(learned.arrays[key].numpy() >= 0.5, source_placement)
        for key in sorted(learned.arrays)
        if key.startswith("estimated_mask")
    ] or None
    if job.task not in ("transfer", "match"):
        return sample, None
    target, target_mask, model_input = load_model_input(job.target_image, job.target_mask, resolution)
    sample.target_image = as_float_image(target)
    sample.target_mask = target_mask
    if job.target_mask_gt:
        sample.gt_mask = load_mask(job.target_mask_gt, size=target.size)
    if job.expected_image:
        sample.expected_image = as_float_image(load_image(job.expected_image).resize(target.size))
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
    sample.output_image = as_float_image(edited)
    save_png(edited, context.out / "edited.png")
    attention = result.attention.detach().cpu().numpy()
    save_map(attention, context.out / "attention.png")
    sample.attention = map_at_original_size(attention, placement)
    save_png(Image.fromarray(target_mask.astype(np.uint8) * 255), context.out / "mask.png")
    if isinstance(result, TransferResult):  # CLiC's loop: which timesteps it ran (first timestep, steps run)
        (context.out / "transfer.json").write_text(json.dumps(result.schedule_record()))
    return [sample], {
        "artifact_image": "edited.png",
        "artifact_attention": "attention.png",
        "artifact_mask": "mask.png",
    }


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
        save_png(
            Image.fromarray((image * 255).round().astype(np.uint8)), context.out / store.generated_image_name(index)
        )
        samples.append(dataclasses.replace(sample, output_image=image))
    artifacts = {"artifact_image": store.generated_image_name(0)}
    if result.attention is not None:
        save_map(result.attention[0].detach().cpu().numpy(), context.out / "attention.png")
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
    save_png(Image.fromarray(sample.predicted_mask.astype(np.uint8) * 255), context.out / "mask.png")
    return [sample], {"artifact_mask": "mask.png"}
