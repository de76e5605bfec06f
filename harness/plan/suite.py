"""Suite files: what a benchmark run contains, as YAML, checked before anything runs.

A suite file (``benchmarks/*.yaml``)::

    name: smoke                       # default: the file's stem
    description: ""                   # free text for reports
    manifest: ../manifests/furniture/manifest.parquet  # required; relative to this file, a URI, or a list
                                      # (``manifests: [...]`` is the same key in its list form)
    model: tiny                       # "tiny", a local diffusers folder or single-file .safetensors/.ckpt (relative to this file) or an HF id
    inpainting_model: null            # default null: tiny -> tiny-inpaint; real runs of RealFill name an SD inpainting model
    resolution: null                  # default null: the model's native image side (64 tiny, 512 SD 1.x)
    device: auto                      # default auto: the GPU Ray assigned a task (resources.num_gpus > 0), else the CPU
    dtype: fp32                       # default fp32; fp16 | bf16: the frozen model's precision (trained weights stay fp32)
    tf32: true                        # default true: TF32 matmul/cuDNN on GPUs that have it (Ampere+); false: exact fp32
    metric_actors: 2                  # default null: 1 actor, or one per 4 GPUs (up to 4) on a GPU cluster; each holds every
                                      # metric's models once, on a GPU slot (0.1) where the cluster has GPUs
    methods:                          # required, at least one
      - name: clic                    # a registered method (clic.methods)
        presets: [paper, official-code]   # default: the method's default preset
        loss_weights: {att: 0.25}     # default {}: the preset's weights; term -> weight >= 0
        learn: {steps: 500, lr: 1.0e-5, resolution: 512}   # default {}: LearnConfig overrides
    seeds: [0]                        # default [0]
    transfer:
      t_start: [5, 10, 15]            # default null: each preset's own; each in [1, steps - 1] (steps kept)
      eta: [1.0]                      # default null: each preset's own; attention-guidance step size >= 0
      steps: 50                       # default 50: DDIM schedule length T
      guidance_scale: 7.5             # default 7.5
    generate:
      objects: [chair, sofa]          # default []: each pair's target_object
      prompts: ["a red {object} with {tokens} style"]   # default []: each preset's prompt; "esr": the fixed
                                      # editing prompts of harness.metrics.esr; {object} {tokens} {token}
      stage_one_steps: 5              # default: the method preset's (CLiC: 5); in [0, steps]
      steps: 50                       # default 50
      images_per_seed: 1              # default 1; every image is scored, a job's value is their mean
    match:
      enabled: true                   # default true: predict missing target masks by RoI matching
      steps: 500                      # default 500
    metrics: [clip_image, lpips]      # default: DEFAULT_METRICS (those registered); harness.metrics names
    metric_options: {clip: {model: ViT-B-32}}   # default {}; key: a model family its metrics declare (clip, lpips, dino, esr)
    resources: {num_cpus: 1, num_gpus: 0.5, max_retries: 2}   # default 1 CPU, 0 GPU per task (fractions allowed);
                                      # max_retries: reruns of a task whose worker died or ran out of memory;
                                      # memory_gb: host memory per task (default null); custom: Ray custom
                                      # resources per task, e.g. {A100: 1} (default {}); a request no node of
                                      # the cluster can satisfy is refused before any job is submitted
                                      # gpu_memory_gib: one GPU's memory (default null): a method declaring its
                                      # expected memory (clic.methods.base.GpuMemory) is packed by it; a
                                      # method entry's own resources: {num_gpus, num_cpus} win over both
    tasks: [transfer]                 # default [transfer]; subset of transfer, generate, match
    limit_pairs: 10                   # default null: every good pair
    source_masks: use                 # default use; "estimate": learn without the source masks (they become
                                      # ground truth for estimated_mask_iou)
    categories: [furniture]           # default null: every category

``match.enabled`` decides whether pairs without a ``target_mask`` get one predicted by RoI matching (off:
such pairs are not applicable to transfer); the ``match`` *task* scores predicted masks against
``target_mask_gt``. A float like ``1e-5`` is read as a number (plain YAML 1.1 would read a string).

Bounds tied to the model and the machine (:mod:`clic.limits`, the same as ``clic``'s): ``transfer.steps`` and
``generate.steps`` at most the model scheduler's ``num_train_timesteps`` (1000 for SD and tiny); ``resolution``,
``learn.resolution`` and ``generate.images_per_seed`` within what this machine's memory can hold at least.

Every mistake is a :class:`SuiteError` whose message is one line naming the file and the key path, e.g.
``benchmarks/smoke.yaml: methods[1].presets[0]: unknown preset 'fast' for method 'clic' (known: ...)``.
:meth:`Suite.to_dict` is the canonical JSON form (defaults filled in, numbers normalised) that job ids
are hashed from; :func:`suite_from_dict` reads it back.

The parts: :mod:`.suite_model` (the dataclasses), :mod:`.suite_yaml` (the file's YAML), :mod:`.suite_values`
(generic value checks, and why they are not pydantic models), :mod:`.suite_methods` (checks against the method
and metric registries), :mod:`.suite_reader` (the sections, in order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import SuiteError

from .suite_model import DEFAULT_METRICS, MethodSpec, Suite
from .suite_reader import SuiteReader
from .suite_yaml import read_suite_mapping

__all__ = ["DEFAULT_METRICS", "MethodSpec", "Suite", "SuiteError", "load_suite", "suite_from_dict"]


def load_suite(path: str | os.PathLike[str], sets: Sequence[str] = ()) -> Suite:
    """Read and check a suite file (the keys and defaults are in the module docstring); ``sets``: command-line
    ``KEY=VALUE`` overrides applied to the raw mapping first (harness.plan.overrides), checked as the file is."""
    source = os.fspath(path)
    data = read_suite_mapping(source, sets)
    return suite_from_dict(data, source=source, base_dir=Path(source).resolve().parent, default_name=Path(source).stem)


def suite_from_dict(
    data: Any,
    *,
    source: str = "<suite>",
    base_dir: str | os.PathLike[str] | None = None,
    default_name: str | None = None,
) -> Suite:
    """Check a suite given as a mapping (as read from YAML, or :meth:`Suite.to_dict`'s output)."""
    return SuiteReader(source, Path(base_dir) if base_dir is not None else Path.cwd()).suite(data, default_name)
