"""CLiC: learn a local visual concept from one image and a mask, and transfer or generate with it."""

TINY_RANDOM = "tiny-random"  # the one weights label of every seeded tiny model (diffusion model or metric)
