"""Methods and metrics that exist only for the tests, registered the way a plugin registers its own: the
production registries (``clic.methods.REGISTRY``, ``harness.metrics.REGISTRY``) do not list them.

A run resolves each method's and metric's "module:Class" at plan time and its workers import that module,
so this folder is put on ``PYTHONPATH`` before any Ray cluster (or subprocess driver) starts."""

from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = str(Path(__file__).resolve().parent)
PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
TEST_METHODS = {"fault_injection": "fault_injection:FaultInjection"}  # kills its worker or fails on purpose
TEST_METRICS = {"kill_actor_once": "fault_injection:KillActorOnce"}  # kills the metric actor once


def register_test_plugins() -> None:
    from clic.methods import register_method
    from harness.metrics import register_metric

    for name, target in TEST_METHODS.items():
        register_method(name, target)
    for name, target in TEST_METRICS.items():
        register_metric(name, target)
    paths = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]
    if TESTS_DIR not in paths:
        # The project root goes first: tests/clic and tests/harness (folders without __init__.py) would otherwise
        # be namespace packages named clic and harness in a child whose sys.path has tests/ but not the root (a
        # console script such as clic-bench: the editable install's finder runs after the path's namespaces).
        paths = [path for path in paths if path != PROJECT_ROOT]
        os.environ["PYTHONPATH"] = os.pathsep.join([PROJECT_ROOT, TESTS_DIR, *paths])


register_test_plugins()
