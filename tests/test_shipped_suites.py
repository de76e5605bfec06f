"""Every suite shipped in benchmarks/ reads with the real method registry: a change of bounds or config (e.g.
t_start counted from the start of the schedule) that makes one invalid fails here, not in a user's first run."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.plan.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=lambda path: path.name)
def test_every_shipped_suite_reads(path: Path) -> None:
    suite = load_suite(path)
    assert suite.methods and suite.name == path.stem
