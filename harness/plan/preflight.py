"""Preflight: what would certainly fail later, found in seconds before Ray starts.

A run that is missing metric weights, names a model that is not on this machine, reads a broken manifest,
writes into a folder it cannot write, or combines settings no method accepts would otherwise fail only after
every concept was learned (minutes), as a wall of worker tracebacks. :func:`preflight` checks all of them
from configs, cache indexes and file headers (no weights are loaded, no cluster is started) and raises one
:class:`PreflightFailed` listing every problem, one line each; the CLI prints them and exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .jobs import ModelInfo, Pair, Plan
    from .suite_model import Suite


class PreflightFailed(UsageError):
    """Every problem preflight found, one per line (``problems``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Checked:
    """What preflight read and resolved; the run goes on with it instead of reading it all again."""

    suite: Suite
    pairs: list[Pair]
    run_dir: Path
    models: dict[str, ModelInfo | None]
    plan: Plan
    remote: str | None = None  # the run folder's URI when it is on object storage (run_dir is then its staging)


def preflight(
    suite_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    allow_random_metrics: bool = False,
    allow_outside: bool = False,
    allow_other_suite: bool = False,
    sets: Sequence[str] = (),
) -> Checked:
    """Check a suite (with its command-line ``--set`` overrides) before it runs; raise :class:`PreflightFailed`
    with one line per problem."""
    from .suite import load_suite

    suite = load_suite(suite_path, sets)  # a bad key is one line already and nothing else can be checked without it
    # A run folder on object storage is worked on in a local staging folder (harness.remote_folder).
    from ..remote_folder import is_remote, staging_dir

    remote = str(out).rstrip("/") if is_remote(out) else None
    run_dir = staging_dir(remote) if remote else Path(out) if out else Path("runs") / suite.name
    problems: list[str] = []
    from . import file_facts

    file_facts.use_run_folder(run_dir)  # what an earlier run learned of the files (checks, digests)
    pairs = _attempt(problems, lambda: _pairs(suite, allow_outside)) or []
    models_and_resolution = _attempt(problems, lambda: _models(suite))
    created = not run_dir.exists()
    writable = _writable(remote or run_dir)
    problems += writable
    if remote and not writable:  # the prefix's run.json, for the suite check below; an unreadable prefix said now
        from ..remote_folder import RemoteFolder

        problem = RemoteFolder(remote, run_dir).fetch_run_record()
        problems += [f"--out: {problem}"] if problem else []
    problems += device_problems(suite)
    if not allow_other_suite:
        problems += other_suite_problems(run_dir, suite.name, shown=remote)
    plan = None
    if models_and_resolution is not None:
        from .resolve import plan_from_suite

        plan = _attempt(problems, lambda: plan_from_suite(suite, suite.resolution or models_and_resolution[1]))
    problems += missing_metric_weights(suite, allow_random_metrics)
    if problems or plan is None or models_and_resolution is None:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a refused run leaves no empty run folder behind
        raise PreflightFailed(list(dict.fromkeys(problems)))  # dict: the same line once, in order
    return Checked(suite, pairs, run_dir, models_and_resolution[0], plan, remote)


def device_problems(suite: Suite, cuda_available: bool | None = None) -> list[str]:
    """A CUDA device a run's workers cannot get: Ray hides every GPU from a task that requests none, and a machine
    without a visible GPU has none to give (checked here only for a local run, where this machine is the cluster)."""
    if not suite.device.startswith("cuda"):
        return []
    if suite.resources.num_gpus <= 0:
        return [
            f"{suite.source}: device: {suite.device!r} needs resources.num_gpus > 0 (Ray gives a task that requests "
            f"no GPU none to use); set resources.num_gpus or device: auto"
        ]
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return (
        [] if cuda_available else [f"{suite.source}: device: {suite.device!r} but this machine has no visible CUDA GPU"]
    )


def other_suite_problems(run_dir: Path, name: str, shown: str | None = None) -> list[str]:
    """A run folder holds one suite: running another suite into it would mix two plans' rows and run.json.
    ``shown``: the name the user gave the folder (a URI whose staging folder ``run_dir`` is)."""
    from ..store import read_run_record

    try:
        previous = (read_run_record(run_dir).get("suite") or {}).get("name") if run_dir.is_dir() else None
    except ValueError:  # a corrupt run.json is rewritten by the run
        return []
    if previous and previous != name:
        return [
            f"{shown or run_dir}: holds results of suite {previous!r}, not {name!r}; choose another --out, or pass "
            f"--allow-other-suite to add this suite's results to it"
        ]
    return []


# Ray's node resource names -> the suite key that asks for them, and how to say an amount
_REQUEST_KEYS = {"CPU": "resources.num_cpus", "GPU": "resources.num_gpus", "memory": "resources.memory_gb"}


def _amount(name: str, value: float) -> str:
    if name == "memory":
        return f"{value / 2**30:.3g} GiB memory"
    return f"{value:g} {name}{'s' if name in ('CPU', 'GPU') and value != 1 else ''}"


def describe_cluster(nodes: Sequence[Mapping[str, float]]) -> str:
    """What the cluster has, node by node (identical nodes counted once): ``1 node: 2 CPUs, 0 GPUs, 3.2 GiB
    memory`` (custom resources too; Ray's ``node:…``/``accelerator_type:…`` labels and object store left out)."""
    if not nodes:
        return "no alive node"
    kinds: dict[str, int] = {}
    for node in nodes:
        parts = [_amount(name, node.get(name, 0.0)) for name in ("CPU", "GPU", "memory")]
        parts += [
            _amount(name, value)
            for name, value in sorted(node.items())
            if name not in ("CPU", "GPU", "memory", "object_store_memory")
            and not name.startswith(("node:", "accelerator_type:"))
        ]
        kind = ", ".join(parts)
        kinds[kind] = kinds.get(kind, 0) + 1
    return "; ".join(f"{count} node{'s' if count > 1 else ''}: {kind}" for kind, count in kinds.items())


def cluster_problems(suite: Suite, nodes: Sequence[Mapping[str, float]]) -> list[str]:
    """What no node of the cluster can run (``nodes``: each alive node's Ray resources), one line each naming the
    suite key and what the cluster has: a job's GPUs, CPUs, memory or custom resources beyond every node, or all
    of them together on no one node; a CUDA device on a cluster without GPUs. Ray would wait for such a node
    forever ("No available node types can fulfill resource request")."""
    resources = suite.resources
    request = {
        "CPU": resources.num_cpus,
        "GPU": resources.num_gpus,
        "memory": (resources.memory_gb or 0) * 2**30,
        **resources.custom,
    }
    request = {name: amount for name, amount in request.items() if amount > 0}
    has = describe_cluster(nodes)
    problems = []
    for name, amount in request.items():
        if not any(node.get(name, 0.0) >= amount for node in nodes):
            key = _REQUEST_KEYS.get(name, f"resources.custom.{name}")
            most = max((node.get(name, 0.0) for node in nodes), default=0.0)
            problems.append(
                f"{suite.source}: {key}: {_amount(name, amount)} per job, but no node has that "
                f"(at most {_amount(name, most)}); the cluster has {has}"
            )
    if not problems and not any(
        all(node.get(name, 0.0) >= amount for name, amount in request.items()) for node in nodes
    ):
        wanted = ", ".join(_amount(name, amount) for name, amount in request.items())
        problems.append(
            f"{suite.source}: resources: {wanted} per job, but no one node has all of it; the cluster has {has}"
        )
    if suite.device.startswith("cuda") and not any(node.get("GPU", 0.0) > 0 for node in nodes):
        problems.append(
            f"{suite.source}: device: {suite.device}, but the cluster has no GPU (the cluster has {has}); "
            "use device auto or cpu"
        )
    return problems


def gpu_problems(suite: Suite, cluster_gpus: float) -> list[str]:
    """What a cluster with ``cluster_gpus`` GPUs cannot run: tasks asking for GPUs (Ray would wait for them
    forever, saying only that no node fits), or a CUDA device with no GPU to be had."""
    problems = []
    wanted = suite.resources.num_gpus
    has = "no GPU" if cluster_gpus <= 0 else f"{cluster_gpus:g} GPU(s)"
    if wanted > 0 and cluster_gpus < wanted:
        problems.append(
            f"{suite.source}: resources.num_gpus: {wanted:g} per task, but the cluster has {has}; set "
            f"resources.num_gpus to 0 (and device to cpu or auto) or run on a cluster with GPUs"
        )
    if suite.device.startswith("cuda") and cluster_gpus <= 0:
        problems.append(f"{suite.source}: device: {suite.device}, but the cluster has no GPU; use device auto or cpu")
    return problems


def local_gpu_count() -> int:
    """GPUs a local Ray cluster started here would have (torch's count of visible CUDA devices)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def missing_metric_weights(suite: Suite, allow_random_metrics: bool) -> list[str]:
    """One line per weight file a suite's metrics would not find (none with ``allow_random_metrics``)."""
    from ..metrics import metric_class
    from ..metrics.base import MetricSettings

    settings = MetricSettings(
        allow_random=allow_random_metrics, options={k: dict(v) for k, v in suite.metric_options.items()}
    )
    lines: list[str] = []
    for name in suite.metrics:
        check = getattr(metric_class(name), "missing_weights", None)
        for line in check(settings) if check else []:
            lines.append(f"metric {name}: {line}")
    # Several metrics share one CLIP: its missing file is one problem, named after the first metric needing it.
    seen: set[str] = set()
    unique = []
    for line in lines:
        what = line.partition(": ")[2]
        if what not in seen:
            seen.add(what)
            unique.append(line)
    return unique


def _attempt(problems: list[str], check: Callable):
    try:
        return check()
    except (UsageError, ValueError, KeyError, FileNotFoundError) as problem:
        problems.append(_one_line(problem))
        return None


def _one_line(problem: BaseException) -> str:
    text = str(problem.args[0]) if isinstance(problem, KeyError) and problem.args else str(problem)
    return " ".join(text.split()) or type(problem).__name__


def _pairs(suite: Suite, allow_outside: bool) -> list[Pair]:
    from .resolve import load_pairs

    pairs = load_pairs(suite, allow_outside)
    if not pairs:
        raise UsageError(
            f"{suite.source}: no pair to run (manifests {', '.join(map(str, suite.manifests))}, "
            f"categories {suite.categories}, limit_pairs {suite.limit_pairs})"
        )
    return pairs


def _models(suite: Suite):
    from .resolve import describe_models

    return describe_models(suite)


def _writable(run_dir: Path | str) -> list[str]:
    """The output folder can be created and written (harness.guards: not a file, writable; a URI: its scheme's
    package is installed); nothing is made."""
    from ..errors import UsageError
    from ..guards import check_output_folder

    try:
        check_output_folder(str(run_dir), remote_ok=True)
    except UsageError as error:
        return [str(error)]
    return []
