"""What determines a learning run: :class:`LearnConfig` (hashable into a job id) and its :class:`Phase` spans.

Part of the shared learning loop (:mod:`clic.learn`), which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from .augment import AugmentConfig
from .settings import MethodConfig


@dataclass(frozen=True)
class Phase:
    """A span of steps with its own trainable set and learning rates (Break-A-Scene has two)."""

    steps: int
    token_lr: float
    attention_lr: float = 0.0  # 0: attention weights frozen in this phase
    unet_lr: float = 0.0  # >0: the whole UNet trains (Break-A-Scene's original recipe)
    text_encoder_lr: float = 0.0


@dataclass(frozen=True)
class LearnConfig(MethodConfig):
    """Everything that determines a learning run (hashable into a job id via :meth:`to_dict`)."""

    steps: int = 500
    lr: float = 1e-5  # token and attention weights, paper §4 preamble ("Adam, learning rate 1e-5")
    token_lr: float | None = None  # None: same as lr
    optimizer: str = "adam"  # "adam" | "adamw"
    weight_decay: float = 0.0  # attention (and fine-tuned model) weights
    token_weight_decay: float = 0.0  # the token vectors only (Textual Inversion's AdamW uses 1e-2)
    max_grad_norm: float = 0.0  # >0: clip the gradient norm of the trained weights (diffusers' --max_grad_norm)
    clip_token_grad: bool = True  # the token rows count in the clipped norm (as every reference script here does)
    gradient_accumulation: int = 1  # micro-steps per optimizer step; ``steps`` counts optimizer steps
    scale_lr: bool = False  # lr × gradient_accumulation (× batch 1 × 1 process), diffusers' --scale_lr
    # Prior preservation (DreamBooth; Break-A-Scene's train.py): {"weight", "prompt", "images", "steps"}; {} = off.
    prior: Mapping[str, Any] = field(default_factory=dict)
    # LoRA adapters (peft) instead of whole networks: {"rank", "alpha", "dropout", "unet_targets", "text_targets"};
    # a phase's unet_lr / text_encoder_lr then train the adapters only (RealFill's train_realfill.py). {} = off.
    lora: Mapping[str, Any] = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()  # non-empty: overrides steps/lr (multi-phase methods)
    train_kv: bool = True
    train_q_out: bool = False
    train_layers: str = "all"  # cross-attention layers that get trainable copies
    capture_layers: str = "up"  # where l_att reads attention (paper: up-block cross-attention)
    attention_resolution: int | str | None = None  # None: the coarsest captured layer's side; "latent": the latent grid
    normalize_attention: bool = False  # divide each token map by its max (Break-A-Scene)
    attention_norm: str = "raw"  # "raw" probabilities | "minmax": (A − min)/(max − min) per token map
    same_resolution_maps: bool = False  # average only layers native to attention_resolution (Break-A-Scene: 16×16)
    terms: Mapping[str, Any] = field(
        default_factory=lambda: {"con": {"weight": 1.0, "alpha": 0.5}, "att": 0.5, "roi": 0.5}
    )
    context_prompt: str = "A {object} with {tokens} style"
    roi_prompts: tuple[str, ...] = ("A photo of {token}",)  # several: one drawn at random per step
    roi_mask_space: str = "latent"  # "latent": M ⊙ x_t (paper); "pixel": mask the image before encoding
    placeholder: str = "<v*>"
    init_word: str | None = None  # None: the object word
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    resolution: int | None = None  # None: the model's native resolution
    checkpoint_every: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16": autocast; trained weights stay fp32
    gradient_checkpointing: bool = False
    compile_unet: bool = False  # torch.compile the UNet (opt-in; on CPU it compiles for minutes and runs slower)

    MERGED: ClassVar[tuple[str, ...]] = ("terms", "augment", "prior", "lora")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["prior"] = dict(self.prior)
        data["lora"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(self.lora).items()}
        return data

    def merged(self, overrides: Mapping[str, Any] | None) -> LearnConfig:
        if isinstance(overrides, LearnConfig):  # already resolved: it replaces this config whole
            return overrides
        if overrides and "steps" in overrides and "phases" not in overrides and self.phases:
            # A step budget for a phased method (e.g. `clic learn --steps 3`): the phases keep their proportions.
            overrides = {**overrides, "phases": [asdict(p) for p in split_phases(self.phases, int(overrides["steps"]))]}
        return super().merged(overrides)

    @classmethod
    def coerce(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "augment" in data and isinstance(data["augment"], Mapping):
            augment = dict(data["augment"])
            if "jitter_kinds" in augment:
                augment["jitter_kinds"] = tuple(augment["jitter_kinds"])
            data["augment"] = AugmentConfig(**augment)
        if "phases" in data:
            data["phases"] = tuple(p if isinstance(p, Phase) else Phase(**p) for p in data["phases"])
        if "roi_prompts" in data and isinstance(data["roi_prompts"], str):
            data["roi_prompts"] = (data["roi_prompts"],)
        if "roi_prompts" in data:
            data["roi_prompts"] = tuple(data["roi_prompts"])
        return data

    def validate(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"steps must be positive, got {self.total_steps}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.roi_mask_space not in ("latent", "pixel"):
            raise ValueError(f"roi_mask_space must be 'latent' or 'pixel', got {self.roi_mask_space!r}")
        if self.attention_norm not in ("raw", "minmax"):
            raise ValueError(f"attention_norm must be 'raw' or 'minmax', got {self.attention_norm!r}")
        if isinstance(self.attention_resolution, str) and self.attention_resolution != "latent":
            raise ValueError(
                f"attention_resolution must be a side in cells or 'latent', got {self.attention_resolution!r}"
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.lora and (
            int(self.lora.get("rank", 0)) <= 0 or not self.lora.get("unet_targets") or not self.lora.get("text_targets")
        ):
            raise ValueError(f"lora needs a positive rank and unet_targets / text_targets, got {dict(self.lora)}")
        if isinstance(self.resolution, int) and self.resolution > 0:
            from .limits import image_memory_problem  # the bound `clic learn` and the suite reader apply first

            problem = image_memory_problem(self.resolution)
            if problem is not None:
                raise ValueError(f"resolution {self.resolution} is too large: {problem}")
        if self.gradient_accumulation < 1 or self.max_grad_norm < 0:
            raise ValueError(
                f"gradient_accumulation must be >= 1 and max_grad_norm >= 0, got "
                f"{self.gradient_accumulation}, {self.max_grad_norm}"
            )

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases) if self.phases else self.steps

    def schedule(self) -> tuple[Phase, ...]:
        """The phases with their effective learning rates (``scale_lr``: × gradient_accumulation, as diffusers'
        scripts scale by accumulation × batch size (1) × processes (1))."""
        if self.phases:
            phases = self.phases
        else:
            phases = (
                Phase(
                    self.steps,
                    self.token_lr if self.token_lr is not None else self.lr,
                    self.lr if (self.train_kv or self.train_q_out) else 0.0,
                ),
            )
        if not self.scale_lr or self.gradient_accumulation == 1:
            return phases
        k = self.gradient_accumulation
        return tuple(
            replace(
                p,
                token_lr=p.token_lr * k,
                attention_lr=p.attention_lr * k,
                unet_lr=p.unet_lr * k,
                text_encoder_lr=p.text_encoder_lr * k,
            )
            for p in phases
        )


def split_phases(phases: Sequence[Phase], total: int) -> tuple[Phase, ...]:
    """``phases`` with their step counts rescaled to sum to ``total`` (each keeps ≥ 1 step while total allows)."""
    weights = [p.steps for p in phases]
    counts = [max(1, round(total * w / sum(weights))) if total >= len(phases) else 0 for w in weights]
    if total < len(phases):
        counts = [1 if i < total else 0 for i in range(len(phases))]
    counts[-1] += total - sum(counts)
    while counts[-1] < 0:  # rounding overshot: take the excess from the longest phase
        longest = max(range(len(counts) - 1), key=lambda i: counts[i])
        counts[longest] -= 1
        counts[-1] += 1
    return tuple(replace(p, steps=n) for p, n in zip(phases, counts) if n > 0)
