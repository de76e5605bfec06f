"""ConceptExpress: K found by the clustering on synthetic attention, FINCH, the OT and SupCon terms against their
reference formulas, the self-attention recorder, what trains, end to end."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clic.attention import AttentionCapture
from clic.learn import ConceptSource, encode_text
from clic.methods.base import get_method
from clic.methods.concept_express import (ConceptExpressConfig, cluster_concepts, finch, supervised_contrastive,
                                          symmetric_kl, wasserstein_alignment)
from clic.models import build_tiny
from clic.selfattention import recording_self_attention


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


def saliency(labels: torch.Tensor) -> torch.Tensor:
    """An end-of-text map: high on the object, low on the background."""
    return torch.where(labels > 0, 1.0, 0.1)


@pytest.mark.parametrize("noise, seed", [(0.5, 0), (2.0, 1)])
def test_clustering_finds_two_concepts_without_being_given_k(noise: float, seed: int):
    """No K anywhere: pre-clustering, the end-of-text saliency (background dropped) and the thresholded merge
    between touching masks find the two parts."""
    labels = two_part_object()
    masks, features = cluster_concepts(part_attention(labels, noise=noise, seed=seed), saliency(labels))
    assert masks.shape == (2, 16, 16) and features.shape == (2, 256)
    parts = [(labels == 1).float(), (labels == 2).float()]
    assert min(max(iou(mask, part) for mask in masks) for part in parts) > 0.9
    assert float((masks.sum(0) * (labels == 0)).sum()) == 0  # nothing of the background kept


def test_clustering_finds_three_concepts_when_the_object_has_three_parts():
    labels = two_part_object()
    labels[3:6, 3:13] = 3  # a third part on top
    masks, _ = cluster_concepts(part_attention(labels, noise=0.5, seed=2), saliency(labels))
    assert masks.shape[0] == 3


def test_symmetric_kl_is_the_reference_kld_distance():
    """ptp_utils.kld_distance: ((Σ p log p − p·log q) + (Σ q log q − q·log p)) / 2."""
    p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    q = torch.tensor([[0.1, 0.1, 0.8]])
    expected = torch.tensor([[0.5 * (sum(p[i, k] * math.log(p[i, k] / q[0, k]) for k in range(3))
                                     + sum(q[0, k] * math.log(q[0, k] / p[i, k]) for k in range(3)))] for i in range(2)])
    torch.testing.assert_close(symmetric_kl(p, q), expected)


def test_finch_first_partition_links_first_neighbours():
    """Points on a line at 0, 1, 10, 11, 30: first neighbours 0↔1, 10↔11, 30→11: partition 0 = {0,1}, {10,11,30}."""
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [30.0]])
    partitions = finch(x, distance=torch.cdist)
    labels = partitions[0].labels
    assert partitions[0].count == 2 and labels[0] == labels[1] and labels[2] == labels[3] == labels[4]
    assert labels[0] != labels[2]


def test_wasserstein_alignment_is_the_transport_cost():
    """Sinkhorn (ε 1e-3) approaches the exact OT cost: moving a unit mass two cells to the right costs 2."""
    source_map, target_map = torch.zeros(3, 3), torch.zeros(3, 3)
    source_map[1, 0], target_map[1, 2] = 1.0, 1.0
    source_map, target_map = source_map + 1e-6, target_map + 1e-6
    cost = wasserstein_alignment(source_map, target_map, 1e-3, 200)
    assert float(cost) == pytest.approx(2.0, abs=1e-3)
    attention = target_map.clone().requires_grad_(True)
    wasserstein_alignment(source_map, attention).backward()
    assert attention.grad is not None and torch.isfinite(attention.grad).all()


def test_supervised_contrastive_is_supcon_one_view():
    """utils/loss.py SupConLoss, contrast_mode 'one', one view: anchors = contrast = the features."""
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(6, 4, generator=generator), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = 0.0
    for i in range(6):
        logits = [float(features[i] @ features[j]) / 0.07 for j in range(6)]
        top = max(logits)
        denominator = sum(math.exp(logits[j] - top) for j in range(6) if j != i)
        positives = [j for j in range(6) if j != i and labels[j] == labels[i]]
        expected += -sum((logits[j] - top) - math.log(denominator) for j in positives) / len(positives)
    assert float(supervised_contrastive(features, labels, 0.07)) == pytest.approx(expected / 6, rel=1e-5)


def test_settings_are_the_released_script():
    config = get_method("concept_express").learn_config()
    assert (config.steps, config.lr, config.weight_decay, config.lambda_attention, config.weight_contrast,
            config.temperature, config.split_tokens, config.merge_step, config.p_flip) == (
        500, 5e-4, 1e-2, 1e-5, 1e-3, 0.07, 5, 100, 0.5)


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
    concept = get_method("concept_express").learn(components, source, overrides={"steps": 3, "merge_step": 2},
                                                  out_dir=tmp_path / "concept", progress=False)
    after = frozen_snapshot(components)
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
    assert concept.attention_state == {}
    count = concept.extras["concepts_found"]
    assert count >= 1 and len(concept.tokens) == count
    split_rows = [row for row in concept.loss_log if row["step"] < 2]
    assert len(split_rows) == 2 * 5 * count and all("supcon" in row for row in split_rows)  # 5 split tokens each
    merged_rows = [row for row in concept.loss_log if row["step"] == 2]
    assert len(merged_rows) == count + (1 if count > 0 else 0) and "supcon" not in merged_rows[0]  # + the joint row
    loaded = LearnedConcept.load(tmp_path / "concept")
    masks = torch.stack([loaded.arrays[f"estimated_mask_{k}"] for k in range(count)])
    assert masks.shape == (count, 64, 64) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.flatten(1).sum(1) > 0).all()
    assert float((masks.sum(0) > 1).sum()) == 0  # clusters are disjoint
    torch.testing.assert_close(loaded.arrays["source_masks"], masks)


def test_learn_transfer_generate_end_to_end(source):
    method = get_method("concept_express")
    concept = method.learn(build_tiny(), source, overrides={"steps": 2}, progress=False)
    target = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    mask = torch.zeros(64, 64)
    mask[20:50, 20:50] = 1
    result = method.transfer(build_tiny(), concept, target, mask, "vase", overrides={"steps": 4, "t_start": 3})
    assert result.image.shape == (3, 64, 64)
    generated = method.generate(build_tiny(), concept, "table", overrides={"steps": 4, "stage_one_steps": 1})
    assert generated.images.shape == (1, 3, 64, 64)
