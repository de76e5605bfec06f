"""Moved to :mod:`clic.synth.render` (the world model trains on these renders, and `clic/` never imports `harness/`);
kept so that existing imports of this module keep working."""

from clic.synth.render import *  # noqa: F401,F403
