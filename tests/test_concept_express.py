"""ConceptExpress: the clustering on synthetic attention, the self-attention recorder, what trains, the
concept-wise step by hand, end to end."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clic.attention import AttentionCapture
from clic.learn import ConceptSource, StepBatch, TrainState, encode_text, format_prompt
from clic.losses import Objective
from clic.methods.base import get_method
from clic.methods.concept_express import cluster_concepts, concept_wise_step, js_divergence, kmeans
from clic.models import build_tiny
from clic.selfattention import recording_self_attention
from clic.tokens import ConceptTokens


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


def two_part_object(side: int = 16) -> torch.Tensor:
    """Labels (side, side): 0 background (touching the border), 1 the left part, 2 the right part."""
    labels = torch.zeros(side, side, dtype=torch.long)
    labels[3:13, 3:8] = 1
    labels[3:13, 8:13] = 2
    return labels


def part_attention(labels: torch.Tensor, noise: float, seed: int = 0, cohesion: float = 0.3) -> torch.Tensor:
    """Self-attention rows: each pixel attends uniformly to its own part, an object pixel also (weight
    ``cohesion``) to the whole object, plus positive noise; rows normalised."""
    flat = labels.flatten()
    rows = (flat[:, None] == flat[None, :]).float()
    rows = rows / rows.sum(1, keepdim=True)
    on_object = (flat > 0).float()
    whole = on_object[:, None] * on_object[None, :]
    rows = torch.where(on_object[:, None] > 0, (1 - cohesion) * rows + cohesion * whole / whole.sum(1, keepdim=True).clamp_min(1), rows)
    rows = rows + noise * torch.rand(rows.shape, generator=torch.Generator().manual_seed(seed)) / rows.shape[1]
    return rows / rows.sum(1, keepdim=True)


def test_clustering_separates_two_parts_and_drops_the_background():
    labels = two_part_object()
    masks = cluster_concepts(part_attention(labels, noise=2.0), concepts=2, pre_clusters=8, seed=0)
    assert masks.shape == (2, 16, 16)
    parts = [(labels == 1).float(), (labels == 2).float()]
    best = [max(iou(mask, part) for mask in masks) for part in parts]
    assert min(best) > 0.9
    assert float((masks.sum(0) * (labels == 0)).sum()) == 0  # nothing of the background kept


def test_one_concept_is_the_whole_object():
    """The parts attend to each other more than to the background, so merging to one concept joins them."""
    labels = two_part_object()
    mask = cluster_concepts(part_attention(labels, noise=0.5, seed=1), concepts=1, pre_clusters=6, seed=0)[0]
    assert iou(mask, (labels > 0).float()) > 0.9


def test_kmeans_is_seeded_and_finds_separated_groups():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(20, 2, generator=generator) * 0.1, torch.randn(20, 2, generator=generator) * 0.1 + 5])
    first = kmeans(points, 2, 20, torch.Generator().manual_seed(4))
    again = kmeans(points, 2, 20, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert len(set(first[:20].tolist())) == 1 and len(set(first[20:].tolist())) == 1 and first[0] != first[-1]


def test_js_divergence_is_symmetric_zero_on_equal_and_bounded():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.1, 0.1, 0.8])
    assert float(js_divergence(p, p)) == pytest.approx(0.0, abs=1e-7)
    assert float(js_divergence(p, q)) == pytest.approx(float(js_divergence(q, p)))
    disjoint = float(js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])))
    assert disjoint == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-5)


def test_self_attention_recorder_matches_the_stock_output_and_rows_are_distributions():
    components = build_tiny()
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text, _ = encode_text(components, ["", ""])
    timesteps = torch.tensor([100, 500])
    with torch.no_grad():
        stock = components.unet(latents, timesteps, encoder_hidden_states=text).sample
        before = dict(components.unet.attn_processors)
        with recording_self_attention(components.unet, "up", max_side=16) as maps:
            recorded = components.unet(latents, timesteps, encoder_hidden_states=text).sample
    torch.testing.assert_close(recorded, stock, atol=1e-5, rtol=1e-4)
    assert {type(p) for p in components.unet.attn_processors.values()} == {type(p) for p in before.values()}
    assert maps.sums and all(count == 2 for count in maps.counts.values())
    mean = maps.mean(8)
    assert mean.shape == (64, 64)
    torch.testing.assert_close(mean.sum(1), torch.ones(64), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ the method
@pytest.fixture(scope="module")
def source() -> ConceptSource:
    labels = F.interpolate(two_part_object()[None, None].float(), size=(64, 64), mode="nearest")[0, 0]
    palette = torch.tensor([[1.0, 1.0, 1.0], [-0.8, 0.6, -0.2], [0.7, -0.7, 0.4]])
    image = palette[labels.long()].permute(2, 0, 1)
    return ConceptSource(image, torch.stack([(labels == 1).float(), (labels == 2).float()]), "vase")


def frozen_snapshot(components) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": tensor.detach().clone()
            for prefix, module in (("unet", components.unet), ("text", components.text_encoder), ("vae", components.vae))
            for name, tensor in module.state_dict().items() if not name.endswith("token_embedding.weight")}


def test_only_the_tokens_train_and_masks_are_kept(source, tmp_path):
    from clic.concept import LearnedConcept

    components = build_tiny()
    before = frozen_snapshot(components)
    concept = get_method("concept_express").learn(components, source, overrides={"steps": 2},
                                                  out_dir=tmp_path / "concept", progress=False)
    after = frozen_snapshot(components)
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
    assert concept.attention_state == {}
    assert concept.tokens == ["<c1*>", "<c2*>"]
    loaded = LearnedConcept.load(tmp_path / "concept")
    masks = torch.stack([loaded.arrays["estimated_mask_0"], loaded.arrays["estimated_mask_1"]])
    assert masks.shape == (2, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.flatten(1).sum(1) > 0).all()
    assert float((masks[0] * masks[1]).sum()) == 0  # clusters are disjoint
    torch.testing.assert_close(loaded.arrays["source_masks"], masks)


def test_concept_wise_step_matches_hand_computation():
    components = build_tiny()
    config = get_method("concept_express").learn_config()
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, ["<c1*>", "<c2*>"], ["vase", "vase"])
    state = TrainState(components, tokens, AttentionCapture(components.unet, ""), Objective(config.terms), config, 4)
    masks = torch.zeros(2, 64, 64)
    masks[0, :, :32] = 1
    masks[1, 8:40, 32:] = 1
    generator = torch.Generator().manual_seed(0)
    batch = StepBatch(latents=torch.randn(1, 4, 16, 16, generator=generator), masks=masks,
                      image=torch.zeros(3, 64, 64), suffix="", timestep=torch.tensor([300]),
                      noise=torch.randn(1, 4, 16, 16, generator=generator))
    loss, _ = concept_wise_step(state, batch, "vase")
    x_t = components.scheduler.add_noise(batch.latents, batch.noise, batch.timestep)
    per_concept = []
    for k, token in enumerate(tokens.tokens):
        text, _ = encode_text(components, [format_prompt(config.context_prompt, "vase", [token])])
        eps = components.unet(x_t, batch.timestep, encoder_hidden_states=text).sample
        latent_mask = F.interpolate(masks[k][None, None], size=(16, 16), mode="nearest")
        per_concept.append(((latent_mask * (eps - batch.noise)) ** 2).mean())
    assert float(loss) == pytest.approx(float(sum(per_concept) / 2), rel=1e-4)


def test_learn_transfer_generate_end_to_end(source):
    method = get_method("concept_express")
    single = ConceptSource(source.image, source.masks[:1], "vase")
    concept = method.learn(build_tiny(), single, overrides={"steps": 2}, progress=False)
    assert concept.tokens == ["<c*>"]
    target = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    mask = torch.zeros(64, 64)
    mask[20:50, 20:50] = 1
    result = method.transfer(build_tiny(), concept, target, mask, "vase", overrides={"steps": 4, "t_start": 3})
    assert result.image.shape == (3, 64, 64)
    generated = method.generate(build_tiny(), concept, "table", overrides={"steps": 4, "stage_one_steps": 1})
    assert generated.images.shape == (1, 3, 64, 64)
