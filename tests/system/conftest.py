"""System tests (Ray clusters, browsers, the CLIs end to end): one Ray cluster per test session, the test-only
methods registered before it starts, and the harness tests' builders importable by name."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import plugins  # noqa: F401 - registers the test-only methods before any cluster starts (tests/plugins.py)
import pytest

# System tests reuse the harness tests' input builders (test_manifest's DataSet, test_study's fake runs): make
# them importable when tests/system runs alone.
HARNESS_TESTS = str(Path(__file__).resolve().parent.parent / "harness")
if HARNESS_TESTS not in sys.path:
    sys.path.insert(0, HARNESS_TESTS)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """A local 2-CPU Ray cluster shared by every test that asks for it, shut down at the end.
    Starting one costs ~4 s and ~1 GB."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()
