"""Errors shared by every phase, at the bottom of the import graph (imports nothing from the project)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (a suite key, a manifest, a run folder): printed as one line, exit code 2."""


class SuiteError(UsageError, ValueError):
    """A suite file that cannot run: one line, ``<file>: <key path>: <problem>`` (the CLI exits 2). Here, not in
    :mod:`harness.plan.suite`, so that the resolver the suite reader calls raises it without importing the reader."""
