"""Errors shared by every phase, at the bottom of the import graph (imports nothing from the project)."""
from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (a suite key, a manifest, a run folder): printed as one line, exit code 2."""
