"""A learned concept on disk: a folder that stock diffusers can load, plus our metadata.

Layout of a concept folder::

    concept.json                                   method, preset, tokens, object word, config, model id
    learned_embeds-<token>.safetensors             one per token: pipeline.load_textual_inversion(path)
    pytorch_custom_diffusion_weights.safetensors   trained attention weights (if any), keys as
                                                   unet.save_attn_procs writes them, plus an empty tensor
                                                   under each untrained layer's processor name (what
                                                   save_attn_procs' .bin format keeps as ``{}``), so the
                                                   stock ``unet.load_attn_procs`` sets every processor
    losses.csv                                     per-step loss terms
    arrays.safetensors                             named tensors a method keeps (estimated masks, ...)

:func:`load_into_pipeline` is the stock route (a fresh ``StableDiffusionPipeline`` plus diffusers'
own loading calls, which a user can write out: ``pipe.load_textual_inversion(token_file, token=...)`` per token
and ``pipe.unet.load_attn_procs(folder, weight_name=ATTN_WEIGHTS_NAME, _pipeline=pipe)``; diffusers 0.42 sets the
processors only when ``_pipeline`` is given, see ``tests/clic/test_stock_loading.py``); :meth:`LearnedConcept.apply` is
ours, onto :class:`~clic.components.SDComponents`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .attention import AttentionCapture
from .components import SDComponents
from .reuse import keep_originals
from .tokens import add_learned_tokens, load_token_file, token_file_name

ATTN_WEIGHTS_NAME = "pytorch_custom_diffusion_weights.safetensors"
FORMAT_VERSION = 1


@dataclass
class LearnedConcept:
    method: str
    preset: str
    tokens: list[str]
    object_word: str
    vectors: dict[str, torch.Tensor]
    attention_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # Every attention processor of the UNet learned on (trained or not): the stock loader needs them all.
    attention_layers: list[str] = field(default_factory=list)
    train_kv: bool = False
    train_q_out: bool = False
    model_id: str = ""
    weights_hash: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    loss_log: list[dict[str, float]] = field(default_factory=list)
    # Named tensors a method keeps: estimated masks (H, W) in [0, 1], the source pixels for cut-and-paste ...
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    # Full UNet / text-encoder weights for methods that fine-tune them (Break-A-Scene's original recipe).
    unet_state: dict[str, torch.Tensor] = field(default_factory=dict)
    text_encoder_state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.tokens[0]

    # ------------------------------------------------------------------------------------------ io
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for token, vector in self.vectors.items():
            save_file({token: vector.float().contiguous()}, str(directory / token_file_name(token)))
        if self.attention_state:
            state = {k: v.float().contiguous() for k, v in self.attention_state.items()}
            trained = {k.rsplit(".processor.", 1)[0] + ".processor" for k in state}
            # diffusers' load_attn_procs reads a length-0 value as an untrained layer (its .bin format's {}):
            state.update({name: torch.zeros(0) for name in self.attention_layers if name not in trained})
            save_file(state, str(directory / ATTN_WEIGHTS_NAME), metadata={"format": "pt"})
        if self.unet_state:
            save_file(
                {k: v.contiguous() for k, v in self.unet_state.items()}, str(directory / "unet_state.safetensors")
            )
        if self.text_encoder_state:
            save_file(
                {k: v.contiguous() for k, v in self.text_encoder_state.items()},
                str(directory / "text_encoder_state.safetensors"),
            )
        if self.arrays:
            save_file(
                {k: v.float().contiguous() for k, v in self.arrays.items()}, str(directory / "arrays.safetensors")
            )
        if self.loss_log:
            with (directory / "losses.csv").open("w", newline="") as handle:
                columns = list(dict.fromkeys(k for row in self.loss_log for k in row))
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.loss_log)
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "preset": self.preset,
            "tokens": self.tokens,
            "token_files": {t: token_file_name(t) for t in self.tokens},
            "object_word": self.object_word,
            "train_kv": self.train_kv,
            "train_q_out": self.train_q_out,
            "attention_weights": ATTN_WEIGHTS_NAME if self.attention_state else None,
            "model_id": self.model_id,
            "weights_hash": self.weights_hash,
            "config": self.config,
            "extras": self.extras,
        }
        (directory / "concept.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LearnedConcept:
        directory = Path(directory)
        meta_path = directory / "concept.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{directory}: not a concept folder (no concept.json)")
        meta = json.loads(meta_path.read_text())
        vectors = {}
        for token in meta["tokens"]:
            name, vector = load_token_file(directory / meta["token_files"][token])
            vectors[name] = vector
        attention_file = load_file(str(directory / ATTN_WEIGHTS_NAME)) if meta.get("attention_weights") else {}
        attention_state = {k: v for k, v in attention_file.items() if v.numel()}  # without the untrained layers
        attention_layers = (
            sorted({k.rsplit(".processor.", 1)[0] + ".processor" if ".processor." in k else k for k in attention_file})
            if len(attention_file) > len(attention_state)
            else []
        )
        unet_path = directory / "unet_state.safetensors"
        text_path = directory / "text_encoder_state.safetensors"
        arrays_path = directory / "arrays.safetensors"
        loss_log = []
        if (directory / "losses.csv").exists():
            with (directory / "losses.csv").open() as handle:
                loss_log = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
        return cls(
            method=meta["method"],
            preset=meta["preset"],
            tokens=list(meta["tokens"]),
            object_word=meta["object_word"],
            vectors=vectors,
            attention_state=attention_state,
            attention_layers=attention_layers,
            train_kv=meta["train_kv"],
            train_q_out=meta["train_q_out"],
            model_id=meta.get("model_id", ""),
            weights_hash=meta.get("weights_hash", ""),
            config=meta.get("config", {}),
            loss_log=loss_log,
            arrays=load_file(str(arrays_path)) if arrays_path.exists() else {},
            extras=meta.get("extras", {}),
            unet_state=load_file(str(unet_path)) if unet_path.exists() else {},
            text_encoder_state=load_file(str(text_path)) if text_path.exists() else {},
        )

    # ------------------------------------------------------------------------------ onto a model
    def apply(self, components: SDComponents, capture_layers: str = "up") -> AttentionCapture:
        """Add the tokens and install the trained attention weights; returns the capture handle."""
        add_learned_tokens(components.tokenizer, components.text_encoder, self.vectors)
        # Fine-tuned weights replace the base ones: the lender (clic.reuse) gets the originals to put back after the
        # job, and two-stage generation's first stage gets them to run the unmodified model (clic.generate.base_model).
        base: dict[str, dict[str, torch.Tensor]] = {}
        for label, module, state in (
            ("unet", components.unet, self.unet_state),
            ("text_encoder", components.text_encoder, self.text_encoder_state),
        ):
            if state:
                keep_originals(components, label, [(n, p) for n, p in module.named_parameters() if n in state])
                current = module.state_dict()
                base[label] = {k: current[k].detach().clone() for k in state if k in current}
                module.load_state_dict(state, strict=False)
        components._base_states = base
        if (self.config or {}).get("lora"):  # LoRA adapters (RealFill's original recipe), in peft's format
            from .lora import LORA_ADAPTER, install_lora

            install_lora(
                {"unet": components.unet, "text_encoder": components.text_encoder},
                self.arrays,
                LORA_ADAPTER,
                self.config["lora"],
            )
        layers = sorted({k.rsplit(".processor.", 1)[0] + ".processor" for k in self.attention_state})
        capture = AttentionCapture(
            components.unet,
            capture_layers,
            train_kv=self.train_kv,
            train_q_out=self.train_q_out,
            train_layers=layers or "all",
        )
        if self.attention_state:
            capture.load_state_dict(self.attention_state)
        components.unet.requires_grad_(False)
        return capture

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in ("method", "preset", "tokens", "object_word", "model_id")}


def load_into_pipeline(pipeline, directory: str | Path) -> None:
    """Load a concept folder into a stock diffusers pipeline with diffusers' own loaders.

    diffusers 0.42's ``UNet2DConditionModel.load_attn_procs`` only installs Custom Diffusion processors
    when given ``_pipeline`` (its ``set_attn_processor`` call sits inside that branch; without it the call
    returns having set nothing, peft installed or not), and ``set_attn_processor`` counts every layer: the
    weights file carries an empty tensor per untrained layer (folders written before that are completed here).
    """
    directory = Path(directory)
    meta = json.loads((directory / "concept.json").read_text())
    for token in meta["tokens"]:
        pipeline.load_textual_inversion(str(directory / meta["token_files"][token]), token=token)
    if meta.get("attention_weights"):
        state: dict[str, Any] = dict(load_file(str(directory / meta["attention_weights"])))
        present = {k.rsplit(".processor.", 1)[0] + ".processor" if ".processor." in k else k for k in state}
        for name in pipeline.unet.attn_processors:
            if name not in present:
                state[name] = {}
        pipeline.unet.load_attn_procs(state, _pipeline=pipeline)
