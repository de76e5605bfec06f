"""The procedural scene renderer (objects with named parts, patterns, colours, placement): pure numpy.

It lives in ``clic/`` because the trained tiny world (:mod:`clic.world`) learns from its renders and
``clic/`` never imports ``harness/``; the benchmark sets (``harness.synth``: transfer pairs, manifests,
previews) build on it from the harness side.
"""
