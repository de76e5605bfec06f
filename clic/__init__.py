"""CLiC: learn a local visual concept from one image and a mask, and transfer or generate with it."""

TINY_RANDOM = "tiny-random"  # the one weights label of every seeded tiny model (diffusion model or metric)
RANDOM_WEIGHTS = (
    "random-weights"  # the label prefix of a real architecture with random weights: "random-weights (sd15)"
)


def is_random_weights(label: object) -> bool:
    """Whether a weights label (or a "+"-joined description of several) names random weights."""
    text = str(label)
    return TINY_RANDOM in text or RANDOM_WEIGHTS in text
