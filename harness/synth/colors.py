"""Moved to :mod:`clic.synth.colors` (the world model trains on these renders, and `clic/` never imports `harness/`);
kept so that existing imports of this module keep working."""

from clic.synth.colors import *  # noqa: F401,F403
