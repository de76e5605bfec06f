"""Harness tests: the test-only methods and metrics are registered before any test plans a run."""

from __future__ import annotations

import plugins  # noqa: F401 - registers the test-only methods and metrics (tests/plugins.py)
