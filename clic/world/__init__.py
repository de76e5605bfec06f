"""The tiny world: models trained on the synthetic scenes of :mod:`clic.synth` (``tiny-world``)."""
