"""The inputs of a learning loop: the source (:class:`ConceptSource`), prompts and their token ids, and the
VAE's latents of the source.

Part of the shared learning loop (:mod:`clic.learn`), which re-exports these names.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .components import SDComponents


@dataclass
class ConceptSource:
    """Source image(s) and one mask per concept token, as model-ready tensors.

    One image: ``image`` (3, R, R), ``masks`` (n_tokens, R, R) (a single (R, R) mask is one token).
    Several images sharing one concept (the automatic source mask, paper §3.3): ``image`` (K, 3, R, R),
    ``masks`` (K, n_tokens, R, R); each learning step draws one of them.
    """

    image: torch.Tensor  # (3, R, R) or (K, 3, R, R) in [-1, 1]
    masks: torch.Tensor  # (n_tokens, R, R) or (K, n_tokens, R, R) in {0, 1}
    object_word: str

    def __post_init__(self) -> None:
        if self.masks.dim() == 2:
            self.masks = self.masks[None]
        expected_dims = 4 if self.image.dim() == 4 else 3
        if (
            self.masks.dim() != expected_dims
            or self.masks.shape[-2:] != self.image.shape[-2:]
            or (expected_dims == 4 and self.masks.shape[0] != self.image.shape[0])
        ):
            raise ValueError(f"masks {tuple(self.masks.shape)} do not match image {tuple(self.image.shape)}")
        if (self.masks.flatten(-2).sum(-1) == 0).any():
            raise ValueError("a concept mask is empty")

    @property
    def images(self) -> torch.Tensor:
        """(K, 3, R, R): the single-image case as K = 1."""
        return self.image if self.image.dim() == 4 else self.image[None]

    @property
    def image_masks(self) -> torch.Tensor:
        """(K, n_tokens, R, R)."""
        return self.masks if self.masks.dim() == 4 else self.masks[None]

    @property
    def n_tokens(self) -> int:
        return self.masks.shape[-3]


# ------------------------------------------------------------------------------ text helpers


_TOKEN_IDS: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[str, ...]], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)
_TOKEN_IDS_PER_TOKENIZER = 512  # a learning loop sees a handful of prompts; a worker many concepts' prompts


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Padded token ids of ``prompts``. A learning loop asks for the same few prompts every step, and the
    tokenizer costs about as much as a small text encoder's pass: ids are remembered per tokenizer and its
    vocabulary size (adding a concept token changes how a prompt tokenizes, and the size with it)."""
    key = (len(tokenizer), tuple(prompts))
    cache = _TOKEN_IDS.setdefault(tokenizer, {})
    if key not in cache:
        if len(cache) >= _TOKEN_IDS_PER_TOKENIZER:
            cache.clear()
        cache[key] = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
    return cache[key].clone()


def encode_text(components: SDComponents, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings on the model's device, token ids on the CPU): positions are looked up in the ids on the
    CPU, without a device round trip."""
    ids = tokenize(components.tokenizer, prompts)
    return components.text_encoder(ids.to(components.text_encoder.device))[0], ids


# "a"/"an" written before {object} in a template follows the word: "a chair", "an apple", "an hour", "a unicorn".
_ARTICLE_BEFORE_OBJECT = re.compile(r"\b([Aa])n? (\{object\})")
_AN_EXCEPTIONS = ("hour", "honest", "honor", "honour", "heir")  # silent h: "an"
_A_EXCEPTIONS = ("uni", "use", "usu", "uten", "eu", "one", "once", "ewe", "uk", "ur")  # "you"/"w" sounds: "a"


def indefinite_article(word: str) -> str:
    """ "an" before a vowel sound, else "a" (spelling rules with the common exceptions)."""
    lower = word.strip().lower()
    if lower.startswith(_AN_EXCEPTIONS):
        return "an"
    if lower.startswith(_A_EXCEPTIONS):
        return "a"
    return "an" if lower[:1] in tuple("aeiou") else "a"


def format_prompt(template: str, object_word: str, tokens: Sequence[str]) -> str:
    article = indefinite_article(object_word)
    template = _ARTICLE_BEFORE_OBJECT.sub(
        lambda m: (article.capitalize() if m.group(1) == "A" else article) + " {object}", template
    )
    return template.format(object=object_word, tokens=" and ".join(tokens), token=tokens[0])


def vae_moments(
    components: SDComponents,
    images: torch.Tensor,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Posterior mean and log-variance (2·C channels) of images in [-1, 1].

    ``device``/``dtype``: the VAE's, when the caller already knows them (a diffusers model looks both up by
    walking its modules, ≈ 0.3 ms each on the tiny model: a loop that encodes every few steps resolves them once).
    """
    vae = components.vae
    with torch.no_grad():
        return vae.encode(images.to(device or vae.device, dtype or vae.dtype)).latent_dist.parameters


def sample_latents(components: SDComponents, moments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Latents in fp32 on the model's device (drawn on the CPU generator: the same on every device)."""
    mean, logvar = moments.float().chunk(2, dim=-3)
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    return (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise) * components.vae.config.scaling_factor
