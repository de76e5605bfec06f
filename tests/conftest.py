"""Shared fixtures. One Ray cluster per test session: starting one costs ~4 s and ~1 GB."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

import plugins  # noqa: F401 - registers the test-only methods before any cluster starts


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """A local 2-CPU Ray cluster shared by every test that asks for it, shut down at the end."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: "fails fast" means "never tries the network", which
    is checked deterministically instead of by timing."""
    import socket

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"a network connection was attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
