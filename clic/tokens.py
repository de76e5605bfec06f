"""Concept tokens: add placeholder words to the tokenizer and train only their embedding rows.

The text encoder's input embedding is wrapped by :class:`ConceptEmbedding`: the vocabulary matrix stays
frozen and the new tokens' vectors are a separate ``nn.Parameter``. That is the gradient mask in its
strictest form — no other row can receive a gradient, an optimizer state or weight decay, so every other
row stays bit-identical — and the optimizer holds (n_tokens × dim) state instead of the whole
49,408-row matrix. Learned vectors are saved in the format ``pipeline.load_textual_inversion`` reads
(one safetensors file per token, ``{token: vector}``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class ConceptEmbedding(nn.Module):
    """An ``nn.Embedding`` whose rows for ``token_ids`` come from a trainable parameter."""

    def __init__(self, base: nn.Embedding, token_ids: Sequence[int], vectors: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        # fp32 master copy even when the text encoder runs in fp16/bf16.
        self.vectors = nn.Parameter(vectors.detach().clone().to(base.weight.device, torch.float32))
        self.token_ids = [int(i) for i in token_ids]
        # On the embedding's device: forward indexes it with the device's token ids.
        lookup = torch.full((base.num_embeddings,), -1, dtype=torch.long)
        lookup[torch.as_tensor(self.token_ids, dtype=torch.long)] = torch.arange(len(self.token_ids))
        self.register_buffer("slot_of_id", lookup.to(base.weight.device), persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # transformers reads .weight for sizes and dtypes
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = F.embedding(input_ids, self.base.weight)
        slots = self.slot_of_id[input_ids]
        is_concept = (slots >= 0).unsqueeze(-1)
        return torch.where(is_concept, self.vectors[slots.clamp(min=0)].to(embeds.dtype), embeds)


def _text_embeddings(text_encoder: nn.Module) -> nn.Module:
    return text_encoder.get_input_embeddings()


class ConceptTokens:
    """Placeholder tokens added to one tokenizer/text-encoder pair, each initialised from a word."""

    def __init__(
        self,
        tokenizer,
        text_encoder: nn.Module,
        tokens: Sequence[str],
        init_words: Sequence[str] | None = None,
        init_vectors: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokens = list(tokens)
        existing = [t for t in self.tokens if t in tokenizer.get_vocab()]
        if existing:
            raise ValueError(f"token(s) already in the vocabulary: {', '.join(existing)}; choose another placeholder")
        base = _text_embeddings(text_encoder)
        if isinstance(base, ConceptEmbedding):  # tokens added earlier (e.g. v* before w*): fold them in first
            merge_concept_embeddings(text_encoder)
            base = _text_embeddings(text_encoder)
        vectors = []
        for i in range(len(self.tokens)):
            given = init_vectors[i] if init_vectors is not None else None
            if given is not None:
                vectors.append(given.detach().to(base.weight.device, torch.float32))
            else:
                word = (init_words[i] if init_words else None) or "object"
                vectors.append(self.word_vector(word, base.weight))
        tokenizer.add_tokens(self.tokens)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        self.token_ids = tokenizer.convert_tokens_to_ids(self.tokens)
        resized = _text_embeddings(text_encoder)
        with torch.no_grad():
            for token_id, vector in zip(self.token_ids, vectors):
                resized.weight[token_id] = vector  # rows hold the init too, for stock loaders
        self.embedding = ConceptEmbedding(resized, self.token_ids, torch.stack(vectors))
        text_encoder.set_input_embeddings(self.embedding)

    def word_vector(self, word: str, weight: torch.Tensor) -> torch.Tensor:
        """Mean embedding of the word's sub-tokens (a multi-piece word still gives one vector)."""
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"initialisation word {word!r} has no tokens")
        return weight[torch.as_tensor(ids, device=weight.device)].detach().float().mean(dim=0)

    @property
    def parameter(self) -> nn.Parameter:
        return self.embedding.vectors

    def vectors(self) -> dict[str, torch.Tensor]:
        return {token: self.embedding.vectors[i].detach().clone() for i, token in enumerate(self.tokens)}

    def positions(
        self, input_ids: torch.Tensor, prompts: Sequence[str] | None = None, which: Sequence[int] | None = None
    ) -> torch.Tensor:
        """(B, n) first position of each concept token (or of the tokens ``which`` indexes) in each prompt.

        A token missing from a prompt (e.g. cut off at 77 tokens) is an error naming the prompt: falling back
        to a position would silently supervise another token's attention (position 0 is the start token).
        """
        columns = []
        chosen = range(len(self.tokens)) if which is None else which
        for token, token_id in ((self.tokens[k], self.token_ids[k]) for k in chosen):
            hits = input_ids == token_id
            missing = (~hits.any(dim=1)).nonzero()
            if len(missing):
                row = int(missing[0, 0])
                text = (
                    prompts[row]
                    if prompts is not None
                    else self.tokenizer.decode(input_ids[row], skip_special_tokens=True)
                )
                raise ValueError(f"the prompt {text!r} does not contain the concept token {token!r}")
            columns.append(hits.float().argmax(dim=1))
        return torch.stack(columns, dim=1).long()

    def save(self, directory: str | Path) -> list[Path]:
        """One ``learned_embeds-<name>.safetensors`` per token, loadable by ``load_textual_inversion``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for token, vector in self.vectors().items():
            path = directory / token_file_name(token)
            save_file({token: vector.float().contiguous()}, str(path))
            paths.append(path)
        return paths


def token_file_name(token: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", token).strip("_") or "token"
    return f"learned_embeds-{slug}.safetensors"


def load_token_file(path: str | Path) -> tuple[str, torch.Tensor]:
    state = load_file(str(path))
    if len(state) != 1:
        raise ValueError(f"{path}: expected one token vector, found keys {sorted(state)}")
    return next(iter(state.items()))


def merge_concept_embeddings(text_encoder: nn.Module) -> None:
    """Write trained vectors into the vocabulary matrix and put a plain ``nn.Embedding`` back."""
    embedding = _text_embeddings(text_encoder)
    if not isinstance(embedding, ConceptEmbedding):
        return
    base = embedding.base
    with torch.no_grad():
        for slot, token_id in enumerate(embedding.token_ids):
            base.weight[token_id] = embedding.vectors[slot].to(base.weight)
    text_encoder.set_input_embeddings(base)


def add_learned_tokens(tokenizer, text_encoder: nn.Module, vectors: dict[str, torch.Tensor]) -> list[int]:
    """Add already-learned tokens (inference), frozen: returns their ids."""
    new = [t for t in vectors if t not in tokenizer.get_vocab()]
    tokenizer.add_tokens(new)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = _text_embeddings(text_encoder).weight
    ids = tokenizer.convert_tokens_to_ids(list(vectors))
    with torch.no_grad():
        for token_id, vector in zip(ids, vectors.values()):
            weight[token_id] = vector.to(weight)
    return ids
