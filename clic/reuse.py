"""One loaded model serving many jobs: lend it to a job, then put back only what the job changed.

Applying or learning a concept changes a model in a few known places: tokens added to the tokenizer, the text
encoder's input embedding (resized, or wrapped by :class:`~clic.tokens.ConceptEmbedding`), the UNet's attention
processors (trainable K/V copies, capture), LoRA adapters (RealFill's original, SingleInsert: taken out again with
:func:`clic.lora.remove_lora`), and, for the few recipes that fine-tune whole networks (Break-A-Scene's original, a
concept's ``unet_state``), parameters changed in place. :class:`ModelLender` restores exactly these
instead of deep-copying the UNet and text encoder for every job (≈4 GB per job on SD 1.x): the tokenizer a job
gets is its own copy (a few MB), processors and the embedding module are put back by reference, and parameters a
job is about to change in place are copied first, only those (:func:`keep_originals`).

Anything else a job changed (a module injected into the tree by other means, a parameter changed without being
declared) is detected by parameter names and PyTorch's in-place version counters; the lender then loads the
model again rather than lend a changed one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
from torch import nn

from .components import SDComponents

_NETWORKS = ("unet", "text_encoder", "vae")


def _signature(components: SDComponents) -> dict[str, tuple[int, int]]:
    """name -> (storage address, in-place version) of every parameter and buffer."""
    state = {}
    for network in _NETWORKS:
        module: nn.Module = getattr(components, network)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            state[f"{network}.{name}"] = (tensor.data_ptr(), tensor._version)
    return state


class ModelLender:
    """Holds one model (per worker and device) and lends it to one job at a time."""

    def __init__(self, load: Callable[[], SDComponents]) -> None:
        self._load = load
        self.reloads = 0
        self._take(load())

    def _take(self, components: SDComponents) -> None:
        self.pristine = components
        self._processors = dict(components.unet.attn_processors)
        self._embedding = components.text_encoder.get_input_embeddings()
        # transformers' resize_token_embeddings swaps the weight (or its .data) of this same module: keep both
        self._embedding_weight = self._embedding.weight
        self._embedding_data = self._embedding.weight.data
        self._embedding_rows = self._embedding.num_embeddings
        self._embedding_padding = self._embedding.padding_idx
        self._vocab_size = components.text_encoder.config.vocab_size
        self._originals: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}
        self._loan: SDComponents | None = None
        self._signature = _signature(components)
        self._embedding_key = next(
            name for name, p in components.text_encoder.named_parameters() if p is self._embedding_weight
        )

    def lend(self) -> SDComponents:
        """The model for one job: its own tokenizer, shared networks. The previous loan is restored first."""
        self.restore()
        self._loan = replace(self.pristine, tokenizer=copy.deepcopy(self.pristine.tokenizer))
        self._loan._lender = self
        return self._loan

    def keep(self, network: str, named: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Copy these parameters' values (once per loan) before a job changes them in place."""
        for name, parameter in named:
            key = f"{network}.{name}"
            if key not in self._originals:
                self._originals[key] = (parameter, parameter.detach().clone())

    def restore(self) -> None:
        """Put back what the last loan changed; reload the model if it changed anything undeclared."""
        if self._loan is None:
            return
        components = self.pristine
        from .lora import remove_lora

        for network in ("unet", "text_encoder"):  # adapters a job added (LoRA): out of the module tree again
            remove_lora(getattr(components, network))
        components.unet.set_attn_processor(dict(self._processors))
        self._embedding_weight.data = self._embedding_data
        self._embedding.weight = self._embedding_weight
        self._embedding.num_embeddings = self._embedding_rows
        self._embedding.padding_idx = self._embedding_padding
        components.text_encoder.set_input_embeddings(self._embedding)
        components.text_encoder.config.vocab_size = self._vocab_size
        with torch.no_grad():
            for parameter, original in self._originals.values():
                parameter.copy_(original)
        for network in _NETWORKS:
            module = getattr(components, network)
            module.requires_grad_(False)
            module.eval()
            for parameter in module.parameters():
                parameter.grad = None
        restored = {*self._originals, f"text_encoder.{self._embedding_key}"}
        self._originals = {}
        self._loan = None
        now = _signature(components)
        changed = set(now) != set(self._signature) or any(
            now[key][0] != self._signature[key][0] or (now[key][1] != self._signature[key][1] and key not in restored)
            for key in now
        )
        if changed:  # e.g. an adapter left in the module tree: never lend a model that is not the loaded one
            self.reloads += 1
            del components
            self.pristine = None
            self._take(self._load())
        else:
            self._signature = now  # restored parameters carry new version numbers


def keep_originals(components: SDComponents, network: str, named: Iterable[tuple[str, nn.Parameter]]) -> None:
    """Declare that the caller is about to change these parameters of ``components.<network>`` in place: a lent
    model copies them first so that it can be put back. A no-op for components that are not lent."""
    lender = getattr(components, "_lender", None)
    if lender is not None:
        lender.keep(network, named)
