"""The learn task of a run: one concept learned into ``concepts/<concept id>`` (or fetched from object storage),
resumable from its snapshots, published whole."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import store
from ..plan.jobs import LearnNode
from .worker_files import load_model_input
from .worker_models import fresh_components, job_peak_memory_mb, node_id, start_memory_window


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
            return {"folder": str(final), "seconds": 0.0, "learned": False, "node_id": node_id()}
        store.publish_folder(final, store.temp_sibling(final))  # moved aside (then cleaned as a stale temp)
    start = time.perf_counter()
    memory_device = start_memory_window(node.model)
    method = method_from_target(node.method_target)()
    _, _, (image, mask, _) = load_model_input(node.source_image, node.source_mask, node.resolution)
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
        "node_id": node_id(),
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
