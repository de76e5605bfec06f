"""The tiny world: the tiny architectures trained on the synthetic scenes of :mod:`clic.synth` (``tiny-world``).

* :mod:`clic.world.data` — the captioned, seeded stream of 64 px renders (train and held-out seed streams);
* :mod:`clic.world.train` — ``clic models train-world``: one stage at a time, seeded, resumable, with a record;
* :mod:`clic.world.stage` — what a stage is made of, the run's settings and the stages' gates;
* :mod:`clic.world.autoencoder` — stage 2, the tiny VAE and its held-out PSNR gate;
* :mod:`clic.world.scorer` — stage 3, a small open_clip model trained contrastively on (render, caption);
* :mod:`clic.world.diffusion` — stage 4, the tiny UNet + text encoder as a latent diffusion model, and its gate;
* :mod:`clic.world.classifier` — the render classifier (object, pattern) that stage 4's gate reads images with.

A run is resumed by repeating its command: ``--checkpoint-dir`` holds ``<stage>/checkpoint.pt`` (model, optimiser,
generator, step, loss history), and a larger ``--steps`` continues it. The same command with ``--out
clic/world/weights`` and ``--steps`` at most the checkpoint's step exports the checkpoint without training.
"""
