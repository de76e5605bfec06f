"""The run record (run.json) a run writes when it ends: the suite, the resolved plan, the library versions, the
models, the packing, the counts and timing of this run, and every earlier run on the folder."""

from __future__ import annotations

import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import store
from ..plan.jobs import ModelInfo, Plan, code_version, git_describe
from .records import RunSummary, now_iso, one_line

if TYPE_CHECKING:
    from ..plan.suite_model import Suite


# module -> its distribution: run.json records their versions
VERSIONED = {
    "torch": "torch",
    "diffusers": "diffusers",
    "ray": "ray",
    "transformers": "transformers",
    "open_clip": "open_clip_torch",
    "pyarrow": "pyarrow",
    "pandas": "pandas",
}


def _versions() -> dict[str, str]:
    """The versions of the libraries results depend on, from the installed distributions' metadata: importing
    them for ``__version__`` (diffusers, transformers, open_clip: seconds each) was most of a resume's time."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name, distribution in VERSIONED.items():
        module = sys.modules.get(name)
        if getattr(module, "__version__", None):
            versions[name] = module.__version__
            continue
        try:
            versions[name] = version(distribution)
        except PackageNotFoundError:
            continue
    return versions


def resolved_plan(plan: Plan) -> dict[str, Any]:
    """What the plan decided, for run.json: each method run's label in suite order, its suite overrides, its class
    and its resolved settings (learning config, each transfer/generation sweep point with its variant, matching),
    and each metric's declaration (the report reads these instead of re-deriving them)."""
    return {
        "methods": [
            {
                "label": run.label,
                "method": run.name,
                "preset": run.preset,
                "variant": run.variant,
                "learn": store.json_ready(run.learn),
                "target": run.target,
                "resolved": store.json_ready(run.resolved.record()) if run.resolved else None,
            }
            for run in plan.methods
        ],
        "metrics": [
            {
                "name": m.name,
                "version": m.version,
                "scale": m.scale,
                "tasks": sorted(m.tasks),
                "group_by": m.group_by,
                "target": m.target,
            }
            for m in plan.metrics
        ],
        "resolution": plan.resolution,
    }


def _packing(suite: Suite, plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    from .packing import method_resources

    return method_resources(suite, plan.resolution)


TF32_APPLIES_TO = "CUDA devices of compute capability >= 8.0 (Ampere and newer); elsewhere fp32 matmuls are exact"


def record_run(
    run_dir: Path,
    suite: Suite,
    plan: Plan,
    summary: RunSummary,
    started: str,
    models: Mapping[str, ModelInfo | None],
    metric_weights: Mapping[str, str],
    slots: int,
) -> None:
    """Write run.json: this run's record on top, every earlier run on the folder kept in ``runs``."""
    try:
        previous = store.read_run_record(run_dir)
    except ValueError:  # a corrupt run.json: rewritten below
        previous = {}
    counts = _counts(summary)
    # Every run on this folder, oldest first: the top-level keys describe the last one.
    runs = [
        *previous.get("runs", []),
        {
            "run_id": summary.run_id,
            "started_at": started,
            "finished_at": now_iso(),
            "host": socket.gethostname(),
            "code_version": code_version(),
            "counts": counts,
        },
    ]
    record = {
        "runs": runs,
        "run_id": summary.run_id,
        "suite": suite.to_dict(),
        "suite_path": suite.source,
        "plan": resolved_plan(plan),
        "code_version": code_version(),
        "git": git_describe(),
        "versions": _versions(),
        "host": socket.gethostname(),
        "started_at": started,
        "finished_at": now_iso(),
        "models": {m: (info.__dict__ if info else None) for m, info in models.items()},
        "packing": {f"{method}/{preset}": entry for (method, preset), entry in _packing(suite, plan).items()},
        "tf32": {"enabled": suite.tf32, "applies_to": TF32_APPLIES_TO},
        "metric_weights": dict(metric_weights) or previous.get("metric_weights", {}),
        "counts": counts,
        "learns_total": int((previous.get("learns_total") or 0) + summary.learns_run),
        "nodes": dict(summary.node_ids),
        "learn_nodes": dict(summary.learn_node_ids),
        "timing": _timing(summary, slots),
    }
    try:
        store.write_run_record(run_dir, record)
    except OSError as error:  # e.g. the disk is full: the results written so far stand
        print(f"{run_dir / store.RUN_RECORD}: not updated ({one_line(error)})", file=sys.stderr)


def _counts(summary: RunSummary) -> dict[str, int]:
    """This run's job, learn and group counts."""
    return {
        "jobs": summary.total_jobs,
        "done": summary.done,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "failed_earlier": summary.failed_earlier,
        "not_applicable": summary.not_applicable,
        "learns_run": summary.learns_run,
        "groups_scored": summary.groups_scored,
        "groups_failed": summary.groups_failed,
        "infrastructure_failed": summary.infrastructure_failed,
    }


def _timing(summary: RunSummary, slots: int) -> dict[str, Any]:
    """Where this run's time went: wall and work seconds, the overhead share, the cold start."""
    return {
        "wall_seconds": summary.wall_seconds,
        "work_seconds": summary.work_seconds,
        "worker_slots": slots,
        "overhead_share": summary.overhead_share,
        "cold_start_seconds": summary.cold_start_seconds,
        "warm_overhead_share": summary.warm_overhead_share,
        "peak_in_flight": summary.peak_in_flight,
    }
