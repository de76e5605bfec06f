"""The Ray cluster a run uses: connecting to it (or starting a local one, and stopping only that one), refusing a
request no node can satisfy before any job is submitted, the Ray options and slot count of a suite's jobs, and the
warm-up calls that load the model into the workers while the driver plans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..plan.jobs import ModelInfo
from .worker_models import warm_worker

if TYPE_CHECKING:
    from ..plan.suite_model import Suite


# Set when this process started a local Ray cluster (not when it joined one): an interrupted or refused run
# stops what it started (harness.cli), and leaves others' clusters alone.
STARTED_LOCAL_CLUSTER: list[bool] = []


def connect(address: str | None, num_cpus: int | None) -> None:
    import os

    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if address:
            ray.init(address=address)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
            STARTED_LOCAL_CLUSTER.append(True)


def stop_started_cluster() -> bool:
    """Shut down the local Ray cluster this process started, if any; True when one was stopped."""
    if not STARTED_LOCAL_CLUSTER:
        return False
    import ray

    STARTED_LOCAL_CLUSTER.clear()
    ray.shutdown()
    return True


def check_cluster(suite: Suite) -> None:
    """Before any job is submitted: a request no node can satisfy is refused in one line per problem, instead of
    Ray repeating "No available node types can fulfill resource request" without end (harness.plan.preflight)."""
    import ray

    from ..plan.preflight import PreflightFailed, cluster_problems

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    problems = cluster_problems(suite, nodes)
    for index, spec in enumerate(suite.methods):  # a method entry's own num_gpus / num_cpus
        if spec.resources:
            own = dataclasses.replace(suite, resources=dataclasses.replace(suite.resources, **spec.resources))
            problems += [
                line.replace(": resources", f": methods[{index}].resources", 1)
                for line in cluster_problems(own, nodes)
                if ": device: " not in line
            ]
    problems = list(dict.fromkeys(problems))
    if problems:
        stop_started_cluster()  # a cluster this run started for nothing is not left behind
        raise PreflightFailed(problems)


def job_options(suite: Suite) -> dict[str, Any]:
    """Ray options of every learn and task job of ``suite``."""
    resources = suite.resources
    # SPREAD: jobs are long and independent, so they go to the least-loaded nodes instead of filling the
    # driver's node first (Ray's default prefers locality, which starves other nodes of short jobs).
    options = {
        "num_cpus": resources.num_cpus,
        "num_gpus": resources.num_gpus,
        "max_retries": resources.max_retries,
        "retry_exceptions": False,
        "scheduling_strategy": "SPREAD",
    }
    if resources.memory_gb:
        options["memory"] = int(resources.memory_gb * 2**30)
    if resources.custom:
        options["resources"] = dict(resources.custom)
    if not suite.tf32:  # workers read it when they load the model (clic.device.configure_tf32)
        options["runtime_env"] = {"env_vars": {"CLIC_TF32": "0"}}
    return options


def job_slots(suite: Suite) -> int:
    """How many of ``suite``'s jobs the connected cluster runs at once."""
    import ray

    resources = suite.resources
    slots = max(1, int(int(ray.cluster_resources().get("CPU", 1)) // max(resources.num_cpus, 1e-9)))
    if resources.num_gpus > 0:  # jobs that run at once are bounded by the GPUs too
        slots = max(1, min(slots, int(ray.cluster_resources().get("GPU", 0) // resources.num_gpus)))
    return slots


@dataclasses.dataclass
class WarmWorkers:
    """Warm-up calls, one per job slot: each imports the method library and loads the model into a worker
    process's cache before jobs arrive (a worker's first import of torch/diffusers takes seconds). Never
    awaited: jobs queue behind them; read at the end for the run's cold start."""

    refs: list[Any]

    @classmethod
    def start(cls, suite: Suite, models: Mapping[str, ModelInfo | None], max_jobs: int | None = None) -> WarmWorkers:
        import ray

        main_model = next((info for info in models.values() if info), None)
        if main_model is None:  # no method needs a model: a worker's first job imports what it needs
            return cls([])
        from clic.methods import method_target

        targets = sorted({method_target(spec.name) for spec in suite.methods if models.get(spec.name)})
        slots = job_slots(suite)
        count = min(slots, max_jobs or slots)
        warm_remote = ray.remote(warm_worker).options(**job_options(suite))
        return cls([warm_remote.remote(main_model, targets) for _ in range(count)])

    def cold_start_seconds(self) -> float:
        """The slowest warm-up's seconds (0 when none answered: e.g. every worker was lost)."""
        import ray

        if not self.refs:
            return 0.0
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=5)
        seconds = []
        for ref in ready:
            try:
                seconds.append(float(ray.get(ref)["seconds"]))
            except Exception:  # a warm-up that failed: its worker's first job pays the start instead
                continue
        return max(seconds, default=0.0)
