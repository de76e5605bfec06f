"""Fixtures shared by tests/clic, tests/harness and tests/system.

The tests live in three folders that mirror the packages: ``clic/`` (the method library alone: never imports
harness or Ray, which ``clic/test_no_harness_imports.py`` enforces), ``harness/`` (planning, store, metrics,
reports without a cluster) and ``system/`` (Ray clusters, browsers, the CLIs end to end). This folder is on
``sys.path`` (pytest inserts a rootless conftest's folder), so the shared modules beside this file
(``helpers``, ``source_index``, ``run_inputs``, ``plugins``, ...) import by name from all three.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: "fails fast" means "never tries the network", which
    is checked deterministically instead of by timing."""
    import socket

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"a network connection was attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
