"""ConceptExpress's learning half (:func:`learn_concept_express`): split tokens, merged at ``merge_step``, one
optimiser step per prompt row through the shared loop's optimiser step (:mod:`clic.optimizer_step`). The paper
and code references are in :mod:`clic.methods.concept_express`, which re-exports these names."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..attention import AttentionCapture, restore_default_processors
from ..components import SDComponents
from ..concept import LearnedConcept
from ..learn import ConceptSource, capture_resolution, encode_text, sample_latents, seed_everything, vae_moments
from ..optimizer_step import OptimizerStep, make_optimizer
from ..prediction import training_target
from ..tokens import ConceptTokens, merge_concept_embeddings
from .base import ESTIMATED_MASK_KEY
from .concept_express_locate import ConceptExpressConfig, locate_concepts
from .concept_express_losses import supervised_contrastive, wasserstein_alignment


def learn_concept_express(
    components: SDComponents,
    source: ConceptSource,
    config: ConceptExpressConfig,
    *,
    preset: str = "default",
    seed: int = 0,
    progress: bool = False,
) -> LearnedConcept:
    config.validate()
    generator = seed_everything(seed)
    device = components.unet.device
    image = source.images[0].to(device)
    masks, features = locate_concepts(components, image, config)
    if masks.shape[0] == 0:
        raise ValueError("ConceptExpress found no salient concept in the source image")
    count, side = masks.shape[0], masks.shape[-1]
    names, split_names, init = _token_names(components, config, count)
    components.freeze()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, split_names, init_vectors=init)
    capture = AttentionCapture(components.unet, "up+down", train_kv=False)
    capture.same_resolution_only = True
    capture.buffer.heads = config.attention_heads
    rows = _RowInputs(
        components,
        capture,
        config,
        capture_resolution(capture, components),
        (vae_moments(components, image[None]), vae_moments(components, image.flip(-1)[None])),
        masks,
        features.reshape(count, side, side),
        generator,
    )
    step = _token_step(tokens, config)
    merged = False
    loss_log: list[dict[str, float]] = []
    started = time.perf_counter()
    for step_index in range(config.steps):
        if step_index == config.merge_step and not merged:
            vectors = _merged_vectors(tokens, config, count)
            tokens = ConceptTokens(components.tokenizer, components.text_encoder, names, init_vectors=list(vectors))
            step = _token_step(tokens, config)
            merged = True
        loss_log.extend(rows.learn_step(tokens, step, step_index, merged))
        if progress and (step_index + 1) % 50 == 0:
            print(f"concept_express step {step_index + 1}: {loss_log[-1]['total']:.4f}")
    capture.set_tokens(None)
    restore_default_processors(components.unet)
    if not merged:  # a run shorter than merge_step still ends with one token per concept
        final = {name: vector.cpu() for name, vector in zip(names, _merged_vectors(tokens, config, count))}
    else:
        final = {name: vector.detach().cpu() for name, vector in tokens.vectors().items()}
    merge_concept_embeddings(components.text_encoder)
    return _finished_concept(source, config, components, masks, features, names, final, loss_log, preset, seed, started)


def _merged_vectors(tokens: ConceptTokens, config: ConceptExpressConfig, count: int) -> torch.Tensor:
    """Each concept's split tokens merged into their mean (TokenManager.merge_tokens; token i + j·K is split j of
    concept i)."""
    with torch.no_grad():
        return tokens.parameter.detach().reshape(config.split_tokens, count, -1).mean(0)


def _token_names(
    components: SDComponents, config: ConceptExpressConfig, count: int
) -> tuple[list[str], list[str], list[torch.Tensor]]:
    """The concepts' token names, their split tokens (token i + j·K is split j of concept i: TokenManager.split_tokens)
    and the splits' initial vectors, taken from the end of the vocabulary (``vocabulary_offset``)."""
    names = [config.placeholder] if count == 1 else [config.placeholder.replace("*", f"{k + 1}*") for k in range(count)]
    split_names = [
        f"{name[:-1]}s{j}>" if name.endswith(">") else f"{name}s{j}"
        for j in range(config.split_tokens)
        for name in names
    ]  # token i + j·K is split j of concept i (TokenManager.split_tokens)
    vocabulary = components.text_encoder.get_input_embeddings().weight.detach()
    start = vocabulary.shape[0] - config.vocabulary_offset
    init = [vocabulary[(start + k) % vocabulary.shape[0]].clone() for k in range(len(split_names))]
    return names, split_names, init


def _finished_concept(
    source: ConceptSource,
    config: ConceptExpressConfig,
    components: SDComponents,
    masks: torch.Tensor,
    features: torch.Tensor,
    names: list[str],
    final: dict[str, torch.Tensor],
    loss_log: list[dict[str, float]],
    preset: str,
    seed: int,
    started: float,
) -> LearnedConcept:
    """The concept with one token per located concept, its estimated masks and the located features."""
    count = masks.shape[0]
    pixel_masks = F.interpolate(masks[None], size=source.image.shape[-2:], mode="nearest")[0]
    arrays = {ESTIMATED_MASK_KEY.format(index=k): pixel_masks[k].clone() for k in range(count)}
    arrays.update(
        {"source_image": source.image.detach().cpu(), "source_masks": pixel_masks.clone(), "features": features.clone()}
    )
    return LearnedConcept(
        method="concept_express",
        preset=preset,
        tokens=names,
        object_word=source.object_word,
        vectors=final,
        model_id=components.model_id,
        weights_hash=components.weights_hash,
        config={**asdict(config), "seed": seed},
        loss_log=loss_log,
        arrays=arrays,
        extras={"seconds": round(time.perf_counter() - started, 3), "concepts_found": count},
    )


def _token_step(tokens: ConceptTokens, config: ConceptExpressConfig) -> OptimizerStep:
    """AdamW over the token rows; train_text_encoder is True by default in the released script, so the token rows
    are what its clipping covers (the shared loop's optimiser step, clic.optimizer_step)."""
    optimizer = make_optimizer("adamw", [tokens.parameter], lr=config.lr, weight_decay=config.weight_decay)
    return OptimizerStep(optimizer, [tokens.parameter], config.max_grad_norm)


@dataclass
class _RowInputs:
    """What every prompt row of every step reads: the model with its attention capture, the located concepts
    (masks, feature maps), the source's posterior and its flip's, and the one random generator."""

    components: SDComponents
    capture: AttentionCapture
    config: ConceptExpressConfig
    resolution: int
    moments: tuple[torch.Tensor, torch.Tensor]  # (as is, flipped)
    masks: torch.Tensor
    feature_maps: torch.Tensor
    generator: torch.Generator

    def learn_step(
        self, tokens: ConceptTokens, step: OptimizerStep, step_index: int, merged: bool
    ) -> list[dict[str, float]]:
        """One step: a flip drawn for the step, then one optimizer step per prompt row (one per token and, once
        merged, the joint row); the rows' logged values."""
        count = self.masks.shape[0]
        flip = float(torch.rand((), generator=self.generator)) < self.config.p_flip
        step_masks = self.masks.flip(-1) if flip else self.masks
        step_features = self.feature_maps.flip(-1) if flip else self.feature_maps
        concept_of = list(range(count)) if merged else [k % count for k in range(len(tokens.tokens))]
        rows = [[k] for k in range(len(tokens.tokens))] + ([list(range(count))] if merged else [])
        logged = []
        for row in rows:
            loss, values = self.row_loss(
                tokens, row, concept_of, merged, self.moments[1 if flip else 0], step_masks, step_features
            )
            step(lambda _micro, loss=loss: loss, f"step {step_index}")
            values.update(total=float(loss.detach()), step=step_index, tokens=float(len(row)))
            logged.append(values)
        return logged

    def row_loss(
        self,
        tokens: ConceptTokens,
        row: list[int],
        concept_of: list[int],
        merged: bool,
        moments: torch.Tensor,
        step_masks: torch.Tensor,
        step_features: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One prompt row's loss: the masked diffusion loss, the Wasserstein alignment of its tokens' attention with
        their concepts' features and, before the merge, the tokens' supervised contrast."""
        components, capture, config, resolution = self.components, self.capture, self.config, self.resolution
        generator = self.generator
        device = components.unet.device
        latents = sample_latents(components, moments, generator)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        t = torch.randint(0, components.scheduler.config.num_train_timesteps, (1,), generator=generator).to(device)
        x_t = components.scheduler.add_noise(latents, noise, t)
        text, ids = encode_text(components, [config.prompt.format(tokens=" and ".join(tokens.tokens[k] for k in row))])
        capture.set_tokens([[int((ids[0] == tokens.token_ids[k]).nonzero()[0, 0]) for k in row]])
        eps = components.unet(x_t, t, encoder_hidden_states=text).sample
        attention = capture.mean_map(resolution)[0]  # (len(row), r, r)
        capture.clear()
        region = torch.stack([step_masks[concept_of[k]] for k in row]).amax(0).to(device)[None, None]
        region = F.interpolate(region, size=latents.shape[-2:], mode="nearest")
        target = training_target(components.scheduler, latents, noise, t)
        diffusion = F.mse_loss(eps * region, target * region)
        targets = F.interpolate(
            step_features[[concept_of[k] for k in row]][:, None].float(), size=(resolution, resolution)
        )
        alignment = sum(
            wasserstein_alignment(
                targets[i, 0].to(device), attention[i], config.sinkhorn_epsilon, config.sinkhorn_iterations
            )
            for i in range(len(row))
        )
        loss = diffusion + config.lambda_attention * alignment
        values = {"masked_diffusion": float(diffusion.detach()), "wasserstein": float(alignment.detach())}
        if not merged:
            labels = torch.tensor(concept_of, device=device)
            contrast = supervised_contrastive(F.normalize(tokens.parameter, dim=-1), labels, config.temperature)
            loss = loss + config.weight_contrast * contrast
            values["supcon"] = float(contrast.detach())
        return loss, values
