"""Stage 3 of the tiny world: a small CLIP trained contrastively on (render, caption) pairs.

The architecture is an open_clip custom config (``configs/clic-world-clip.json``: a 64 px ViT with 8 px patches
and a 3-layer text transformer over CLIP's BPE vocabulary), so it loads wherever open_clip models do. The loss is
CLIP's symmetric InfoNCE with a learned temperature (Radford et al. 2021, Fig. 3 pseudocode; open_clip's
``ClipLoss``). Gate: held-out text->image top-1 retrieval among 100 captions >= 80 % (issue 29, stage 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import render_batch

if TYPE_CHECKING:
    from .stage import Stage, TrainSettings

WORLD_CLIP_MODEL = "clic-world-clip"
_CONFIG = Path(__file__).parent / "configs" / f"{WORLD_CLIP_MODEL}.json"
RETRIEVAL_CANDIDATES = 100
SCORER_WEIGHTS = "open_clip_model.safetensors"


def scorer_open_clip():
    """open_clip with the world scorer's architecture registered (``clic-world-clip``)."""
    import open_clip

    if WORLD_CLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG)
    return open_clip


def build_scorer(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return scorer_open_clip().create_model(WORLD_CLIP_MODEL, pretrained=None)


def tokenize(captions: list[str]) -> torch.Tensor:
    return scorer_open_clip().get_tokenizer(WORLD_CLIP_MODEL)(captions)


def to_clip_input(images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Images in [-1, 1] normalised with the model's own mean/std (open_clip's OpenAI defaults)."""
    mean = torch.tensor(model.visual.image_mean, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std, dtype=images.dtype).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def contrastive_loss(model: torch.nn.Module, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric cross-entropy over the batch's image-text similarity matrix (the pairs on the diagonal)."""
    image_features = torch.nn.functional.normalize(model.encode_image(to_clip_input(images, model)), dim=-1)
    text_features = torch.nn.functional.normalize(model.encode_text(tokenize(captions)), dim=-1)
    logits = model.logit_scale.exp() * image_features @ text_features.T
    labels = torch.arange(len(captions))
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def evaluate_scorer(model: torch.nn.Module, seed: int, candidates: int = RETRIEVAL_CANDIDATES) -> dict:
    """Text->image top-1 among the first ``candidates`` held-out scenes: caption i must rank image i first."""
    from .stage import SCORER_GATE_TOP1

    was_training = model.training
    model.eval()
    images, captions = render_batch(0, candidates, "heldout", seed)
    clip_images = to_clip_input(torch.from_numpy(images), model)
    image_features = torch.nn.functional.normalize(model.encode_image(clip_images), dim=-1)
    text_features = torch.nn.functional.normalize(model.encode_text(tokenize(captions)), dim=-1)
    model.train(was_training)
    ranked_first = (text_features @ image_features.T).argmax(dim=1)
    top1 = float((ranked_first == torch.arange(candidates)).float().mean())
    return {
        "heldout_text_to_image_top1": round(top1, 4),
        "candidates": candidates,
        "gate_top1": SCORER_GATE_TOP1,
        "passed": top1 >= SCORER_GATE_TOP1,
    }


def _step_loss(model: torch.nn.Module, step: int, generator: torch.Generator, settings: TrainSettings) -> torch.Tensor:
    images, captions = render_batch(step * settings.batch, settings.batch, "train", settings.seed)
    return contrastive_loss(model, torch.from_numpy(images), captions)


def _save(model: torch.nn.Module, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SCORER_WEIGHTS
    save_file({name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}, path)
    (folder / f"{WORLD_CLIP_MODEL}.json").write_text(_CONFIG.read_text())
    return path


def load_scorer(folder: Path) -> torch.nn.Module:
    """The scorer exported to ``folder`` (by ``--stage scorer --out``), frozen in eval mode."""
    path = Path(folder) / SCORER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"no world scorer in {folder}: train and export it with "
            "`clic models train-world --stage scorer --out clic/world/weights`"
        )
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream (a metric actor's) is left alone
        # open_clip reads the file itself (strictly), so it does not log "initialized randomly" for a trained model
        model = scorer_open_clip().create_model(WORLD_CLIP_MODEL, pretrained=str(path))
    return model.eval().requires_grad_(False)


def scorer_stage() -> Stage:
    from .stage import Stage

    return Stage(
        build=lambda s: build_scorer(s.seed),
        loss=_step_loss,
        evaluate=lambda model, s: evaluate_scorer(model, s.seed),
        save=_save,
    )
