"""The supplement's augmentations (CLiC supplement B.2, used for every baseline): random grayscale, h-flip
(image and mask together), zoom in/out with a prompt suffix, colour jitter.

Geometric augmentations (flip, zoom) take their parameters from a small discrete set, so each variant's
VAE latents are computed once per learning run and cached (:class:`LatentBank`), and so are their grayscale
versions; a colour jitter draws continuous factors and is encoded when drawn. Parameters come from a
``torch.Generator`` so a seed fixes every draw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ZOOM_OUT_SCALES = (0.6, 0.7, 0.8)
ZOOM_IN_SCALES = (1.2, 1.35, 1.5)
ZOOM_SUFFIX = {"out": ", zoomed-out", "in": ", zoomed-in", None: ""}


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    p_flip: float = 0.5
    p_zoom: float = 0.5  # half of the zooms are in, half out
    p_jitter: float = 0.3
    jitter: float = 0.1  # factor range 1 ± jitter for each of jitter_kinds
    p_grayscale: float = 0.1
    jitter_kinds: tuple[str, ...] = ("brightness", "contrast", "saturation")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.jitter_kinds) - set(JITTERS))
        if unknown:
            raise ValueError(f"unknown jitter kind(s) {', '.join(unknown)}; known: {', '.join(JITTERS)}")


@dataclass(frozen=True)
class GeometricKey:
    flip: bool
    zoom: str | None  # "in" | "out" | None
    scale: float

    @property
    def suffix(self) -> str:
        return ZOOM_SUFFIX[self.zoom]


def _rand(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def draw_geometric(config: AugmentConfig, generator: torch.Generator) -> GeometricKey:
    if not config.enabled:
        return GeometricKey(False, None, 1.0)
    flip = _rand(generator) < config.p_flip
    zoom, scale = None, 1.0
    if _rand(generator) < config.p_zoom:
        zoom = "in" if _rand(generator) < 0.5 else "out"
        scales = ZOOM_IN_SCALES if zoom == "in" else ZOOM_OUT_SCALES
        scale = scales[int(torch.randint(len(scales), (), generator=generator))]
    return GeometricKey(flip, zoom, scale)


def apply_geometric(image: torch.Tensor, mask: torch.Tensor, key: GeometricKey) -> tuple[torch.Tensor, torch.Tensor]:
    """image (C,H,W) in [-1,1], mask (n,H,W) in {0,1}: flip, then zoom about the centre.

    Zoom out shrinks the object onto a white canvas (images are composited on white), zoom in crops
    the centre and enlarges it; masks follow with nearest sampling.
    """
    if key.flip:
        image, mask = image.flip(-1), mask.flip(-1)
    if key.zoom is None:
        return image, mask
    _, height, width = image.shape
    new_h, new_w = round(height * key.scale), round(width * key.scale)
    image_s = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)[0]
    mask_s = F.interpolate(mask[None], size=(new_h, new_w), mode="nearest")[0]
    if key.scale < 1:
        top, left = (height - new_h) // 2, (width - new_w) // 2
        canvas = torch.ones_like(image)
        canvas_mask = torch.zeros_like(mask)
        canvas[:, top : top + new_h, left : left + new_w] = image_s
        canvas_mask[:, top : top + new_h, left : left + new_w] = mask_s
        return canvas, canvas_mask
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return image_s[:, top : top + height, left : left + width], mask_s[:, top : top + height, left : left + width]


def image_region(key: GeometricKey, latent_size: tuple[int, int] | torch.Size, factor: int) -> torch.Tensor:
    """(h, w) {0, 1}: the latent pixels that show the image rather than a zoom-out's padding.

    Custom Diffusion's reference dataset (diffusers examples/custom_diffusion/train_custom_diffusion.py,
    ``CustomDiffusionDataset.preprocess``) marks ``mask[top//f + 1 : (top + scale)//f − 1, …] = 1`` whenever the
    image does not overfill the canvas — one latent pixel inside the image's footprint, so an unzoomed image
    also loses its outer latent ring — and all ones for a zoom-in. Our zoom-out canvas is centred, so ``top`` and
    ``left`` are those of :func:`apply_geometric`.
    """
    h, w = (int(v) for v in latent_size)
    region = torch.zeros(h, w)
    if key.zoom == "in":
        return region.fill_(1.0)
    height, width = h * factor, w * factor
    new_h, new_w = round(height * key.scale), round(width * key.scale)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    region[top // factor + 1 : (top + new_h) // factor - 1, left // factor + 1 : (left + new_w) // factor - 1] = 1.0
    return region


# torchvision.transforms.v2.functional by name: torchvision is imported on the first jitter, not with the config
# (importing it imports torch._dynamo, seconds that planning a run does not need).
JITTERS = {"brightness": "adjust_brightness", "contrast": "adjust_contrast", "saturation": "adjust_saturation"}


@dataclass(frozen=True)
class PhotometricDraw:
    """One draw of the colour augmentations: jitter factors (None: no jitter) and whether to grayscale."""

    factors: tuple[float, ...] | None
    grayscale: bool

    @property
    def changed(self) -> bool:
        return self.factors is not None or self.grayscale


def draw_photometric(config: AugmentConfig, generator: torch.Generator) -> PhotometricDraw:
    """The jitter factors (one per kind, 1 ± jitter) with probability p_jitter, then grayscale with p_grayscale."""
    if not config.enabled:
        return PhotometricDraw(None, False)
    factors = None
    if _rand(generator) < config.p_jitter:
        low, high = 1 - config.jitter, 1 + config.jitter
        factors = tuple(low + (high - low) * _rand(generator) for _ in config.jitter_kinds)
    return PhotometricDraw(factors, _rand(generator) < config.p_grayscale)


def photometric(image: torch.Tensor, config: AugmentConfig, draw: PhotometricDraw) -> torch.Tensor:
    """``draw`` applied to an image in [-1, 1] (with augmentation on, an undrawn image also makes the round trip
    through [0, 1], as it always has: the same bits as before the draws were split from their application)."""
    if not config.enabled:
        return image
    from torchvision.transforms.v2 import functional as TF

    pixels = (image + 1) / 2
    for kind, factor in zip(config.jitter_kinds, draw.factors or ()):
        pixels = getattr(TF, JITTERS[kind])(pixels, factor)
    if draw.grayscale:
        pixels = TF.rgb_to_grayscale(pixels, num_output_channels=3)
    return pixels.clamp(0, 1) * 2 - 1


def apply_photometric(
    image: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, bool]:
    """Colour jitter and grayscale on an image in [-1, 1]; returns (image, changed)."""
    draw = draw_photometric(config, generator)
    return photometric(image, config, draw), draw.changed


class LatentBank:
    """VAE latents per geometric variant, encoded once; photometric variants encoded on demand.

    Without a jitter the colour step is a fixed function of the geometric variant (grayscale or nothing), so its
    image and latents are cached per variant too; a jitter draws continuous factors and is encoded each time.
    """

    def __init__(
        self, encode: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, masks: torch.Tensor
    ) -> None:
        self.encode = encode
        self.image = image
        self.masks = masks
        self.cache: dict[GeometricKey, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.unjittered: dict[tuple[GeometricKey, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self.encode_count = 0

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_count += 1
        return self.encode(image[None])[0]

    def sample(
        self, config: AugmentConfig, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, GeometricKey]:
        """(latents (4,h,w), masks (n,H,W), augmented image (3,H,W), prompt suffix, the geometric draw)."""
        key = draw_geometric(config, generator)
        if key not in self.cache:
            image, masks = apply_geometric(self.image, self.masks, key)
            self.cache[key] = (self._encode(image), masks, image)
        latents, masks, image = self.cache[key]
        draw = draw_photometric(config, generator)
        if draw.factors is None:
            fixed = (key, draw.grayscale)
            if fixed not in self.unjittered:
                coloured = photometric(image, config, draw)
                self.unjittered[fixed] = (self._encode(coloured) if draw.grayscale else latents, coloured)
            latents, coloured = self.unjittered[fixed]
        else:
            coloured = photometric(image, config, draw)
            latents = self._encode(coloured)
        return latents, masks, coloured, key.suffix, key
