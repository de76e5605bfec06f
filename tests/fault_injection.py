"""A TEST-ONLY method that fails on purpose, for the harness's reliability tests (tests/system/test_reliability.py).

It is cut-and-paste (:mod:`clic.methods.cut_paste`) plus one injected fault, chosen by preset:

- ``kill-once-in-learn`` / ``kill-once-in-transfer``: the worker process SIGKILLs itself at learning
  step ``kill_at_step`` (or at the start of the transfer), the way an OOM killer or a pre-empted node ends a
  worker. Only the first attempt dies: a marker file is created just before, so the retry (Ray's
  system-failure retry) finds it and succeeds. Markers live beside the concept folder being written
  (``<concepts root>/.fault-*``), i.e. inside the run folder, keyed by the source (and target) content.
- ``nan-loss``: a deterministic error in learning, raised on every attempt: the harness must record it as a
  failed job, not retry it.
- ``oom`` / ``oom-once``: ``torch.cuda.OutOfMemoryError`` in learning on every attempt / on the first attempt of
  each concept only. Out of memory is the machine's failure: the harness retries it with a larger packing (a
  whole GPU) up to ``max_retries`` and says so in the rows.
- ``disk-full-once``: the first learning attempt of each concept raises ``OSError(ENOSPC)``, the way a full
  disk ends a job; later attempts succeed (a marker, as for kill-once). The harness must treat it as the
  machine's failure, not the job's: the next run runs the job again without ``--retry-failed``.
- ``record``: no failure (the attempts log records the resources each learn was given).
- ``slow``: no failure, only ``seconds`` of sleep in learning and in each transfer, the way a long job
  holds its worker. Scheduling tests use it: two such jobs cannot share a 1-CPU node, so jobs that
  overlap in time must run on different nodes, however fast the machine is.

Every learning attempt appends a line ``PID:gpus=G:cpus=C`` (the Ray resources the attempt was given) to
``<concepts root>/.fault-attempts-<key>``, so a test can count how many times the harness ran it, and with what.

Do not benchmark it; its numbers are cut-and-paste's. It exists so that worker death, node loss and
failing jobs can be tested on CPU in seconds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clic.concept import LearnedConcept
from clic.learn import ConceptSource, learn_concept
from clic.methods.base import GpuMemory
from clic.methods.clic import CLiC
from clic.methods.cut_paste import CutPaste, PasteResult

MARKER_PREFIX = ".fault-"


def _content_key(*tensors: torch.Tensor, label: str) -> str:
    digest = hashlib.sha256(label.encode())
    for tensor in tensors:
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _assigned_resources() -> str:
    """``gpus=G:cpus=C``: what Ray gave this attempt (``gpus=?:cpus=?`` outside a Ray task)."""
    try:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources()
    except Exception:  # not in a Ray worker (a direct call in a test)
        return "gpus=?:cpus=?"
    return f"gpus={assigned.get('GPU', 0):g}:cpus={assigned.get('CPU', 0):g}"


def _die_once(marker: Path) -> None:
    """SIGKILL this process unless ``marker`` exists; create it first so that the next attempt lives."""
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjection(CutPaste):
    name = "fault_injection"
    description = "TEST ONLY: cut-and-paste that kills its worker once or raises, to test the harness's recovery"
    presets = {
        "kill-once-in-learn": {"fault": {"kind": "kill-once", "phase": "learn", "kill_at_step": 2}},
        "kill-once-in-transfer": {"fault": {"kind": "kill-once", "phase": "transfer"}},
        "nan-loss": {"fault": {"kind": "nan-loss", "phase": "learn"}},
        "oom": {"fault": {"kind": "oom", "phase": "learn"}},
        "oom-once": {"fault": {"kind": "oom-once", "phase": "learn"}},
        "disk-full-once": {"fault": {"kind": "disk-full-once", "phase": "learn"}},
        "slow": {"fault": {"kind": "delay", "phase": "learn+transfer", "seconds": 0.5}},
        "record": {"fault": {"kind": "none", "phase": "none"}},
    }
    # A declared expected GPU memory (8 GiB in fp32 at any resolution: no backward term), so packing by memory is
    # tested with it: preset "slow" packs two per 16 GiB GPU.
    gpu_memory = {
        "slow": GpuMemory(
            trained_gib=8.0 - GpuMemory.WEIGHTS_GIB["fp32"],
            saved_512_gib=0.0,
            source="test: declared by tests/fault_injection.py",
        )
    }
    default_preset = "kill-once-in-learn"
    sources = {"method": "none: a test fixture for harness reliability (tests/system/test_reliability.py)"}

    def fault(self, preset: str | None) -> Mapping[str, Any]:
        return self.preset(preset)["fault"]

    def learn(
        self,
        components: Any,
        source: ConceptSource,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> LearnedConcept:
        fault = self.fault(preset)
        steps = int(self.learn_config(preset, overrides).steps)
        markers = Path(out_dir).parent if out_dir is not None else None
        if fault["kind"] in ("kill-once", "disk-full-once", "oom-once") and markers is None:
            raise ValueError("fault_injection: kill-once needs out_dir (its marker file lives beside it)")
        key = _content_key(source.image, source.masks, label=f"{preset or self.default_preset}:{seed}")
        if markers is not None:  # one line per attempt, so tests can count how often the harness tried
            markers.mkdir(parents=True, exist_ok=True)
            with (markers / f"{MARKER_PREFIX}attempts-{key}").open("a") as log:
                log.write(f"{os.getpid()}:{_assigned_resources()}\n")
        if fault["kind"] == "delay":
            time.sleep(float(fault["seconds"]))
        elif fault["phase"] == "learn":
            for step in range(steps):  # a stand-in for a training loop: the fault hits at a given step
                if fault["kind"] == "kill-once" and step == fault["kill_at_step"]:
                    _die_once(markers / f"{MARKER_PREFIX}learn-{key}")
                elif fault["kind"] == "nan-loss" and step == 1:
                    raise FloatingPointError(f"loss is nan at step {step} (injected by fault_injection)")
                elif fault["kind"] == "disk-full-once" and not (markers / f"{MARKER_PREFIX}disk-{key}").exists():
                    (markers / f"{MARKER_PREFIX}disk-{key}").touch()
                    raise OSError(errno.ENOSPC, "No space left on device (injected by fault_injection)")
                elif fault["kind"] == "oom" or (
                    fault["kind"] == "oom-once" and not (markers / f"{MARKER_PREFIX}oom-{key}").exists()
                ):
                    if fault["kind"] == "oom-once":
                        (markers / f"{MARKER_PREFIX}oom-{key}").touch()
                    raise torch.cuda.OutOfMemoryError(
                        "CUDA out of memory. Tried to allocate 2.00 GiB (injected by fault_injection)"
                    )
        concept = super().learn(components, source, preset=preset, overrides=overrides, seed=seed, out_dir=None)
        concept.method = self.name
        concept.config["fault_markers"] = str(markers) if markers is not None else None
        if out_dir is not None:
            concept.save(out_dir)
        return concept

    def transfer(
        self,
        components: Any,
        concept: LearnedConcept,
        target_image: torch.Tensor,
        target_mask: torch.Tensor,
        object_word: str,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> PasteResult:
        fault = self.fault(preset or concept.preset)
        if fault["kind"] == "delay":
            time.sleep(float(fault["seconds"]))
        elif fault["kind"] == "kill-once" and fault["phase"] == "transfer":
            key = _content_key(
                concept.arrays["source_image"], target_image, target_mask, label=f"{concept.preset}:{seed}"
            )
            _die_once(Path(concept.config["fault_markers"]) / f"{MARKER_PREFIX}transfer-{key}")
        return super().transfer(
            components, concept, target_image, target_mask, object_word, preset=preset, overrides=overrides, seed=seed
        )


class KillActorOnce:
    """A TEST-ONLY metric whose first scoring call SIGKILLs the metric actor's process (a marker file, named in
    ``metric_options: {kill_actor_once: {marker: PATH}}``, is created just before), so the restart and the
    retried call are tested deterministically; it emits no values."""

    name = "kill_actor_once"
    version = "1"
    scale = "none (emits no values)"
    values: dict[str, bool] = {}
    tasks = frozenset({"transfer", "generate", "match"})
    weights = "none"

    def __init__(self, settings: Any) -> None:
        self.marker = Path(settings.for_metric(self.name)["marker"])

    def compute(self, samples: list) -> list[list]:
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return [[] for _ in samples]


class ClicKilledOnce(CLiC):
    """A TEST-ONLY CLiC whose worker SIGKILLs itself once, inside learning step ``KILL_AT_STEP`` of the real loop
    (preset ``kill-once``; a marker beside the learning folder is created first), so that a learn with
    ``checkpoint_every`` is tested to resume after a kill. Preset ``straight`` is the same learn, never killed."""

    KILL_AT_STEP = 3
    name = "clic_killed_once"
    description = "TEST ONLY: CLiC whose worker is killed once inside the learning loop"
    presets = {"kill-once": CLiC.presets["paper"], "straight": CLiC.presets["paper"]}
    declared_settings = {"kill-once": CLiC.declared_settings["paper"], "straight": CLiC.declared_settings["paper"]}
    default_preset = "straight"

    def learn(
        self,
        components: Any,
        source: ConceptSource,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> LearnedConcept:
        config = self.learn_config(preset, overrides)
        marker = Path(out_dir).parent / f"{MARKER_PREFIX}learn-kill-{Path(out_dir).name}" if out_dir else None

        def on_step(step: int, values: Mapping[str, float]) -> None:
            if preset == "kill-once" and marker is not None and step == self.KILL_AT_STEP:
                _die_once(marker)

        return learn_concept(
            components,
            source,
            config,
            method=self.name,
            preset=preset or self.default_preset,
            seed=seed,
            step_fn=self.training_step,
            out_dir=out_dir,
            progress=progress,
            on_step=on_step,
        )
