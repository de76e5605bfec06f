"""ConceptExpress: K found by the clustering on synthetic attention, FINCH, the OT and SupCon terms against their
reference formulas, the self-attention recorder, what trains, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.sparse import csr_matrix, eye
from scipy.sparse.csgraph import connected_components

from clic.learn import ConceptSource, encode_text
from clic.methods.base import get_method
from clic.methods.concept_express import (
    ConceptExpressConfig,
    cluster_concepts,
    finch,
    supervised_contrastive,
    symmetric_kl,
    wasserstein_alignment,
)
from clic.models import build_tiny
from clic.selfattention import recording_self_attention

# ------------------------------------------------------------------ the released clustering, written out
# haoosz/ConceptExpress: clustering/finch.py, ptp_utils.py (kld_distance, get_connect, compute_score) and
# train.py cluster_attention; numpy on raw arrays, nothing from clic.methods.concept_express.


def released_kld(a, b):
    """ptp_utils.py L671-683: (KL(a‖b) + KL(b‖a)ᵀ) / 2 row against row."""

    def kl(p, q):
        return np.sum(p * np.log(p), axis=-1, keepdims=True) - p @ np.log(q).T

    return (kl(a, b) + kl(b, a).T) / 2


def released_connect(masks):
    """ptp_utils.get_connect L759-777 (get_num_mask: 4-connected components)."""

    def count(m):
        return ndimage.label(m == 1)[1]

    n = len(masks)
    connect = np.zeros((n, n))
    for i in range(n - 1):
        for j in range(i + 1, n):
            connect[i, j] = connect[j, i] = float(count(masks[i] + masks[j]) < count(masks[i]) + count(masks[j]))
    return connect


def released_finch(data, min_sim=None, masks=None, doubled=True):
    """clustering/finch.py FINCH L118-253 (no req_clust): partitions, counts and min_sim_list.
    doubled=False: the threshold as the plain largest linked distance (the old reading)."""

    def clust_rank(mat):  # L18-63
        s = mat.shape[0]
        dist = released_kld(mat, mat)
        np.fill_diagonal(dist, 1e12)
        first = np.argmin(dist, axis=1)
        A = csr_matrix((np.ones(s), (np.arange(s), first)), shape=(s, s)) + eye(s, format="csr")
        A = (A @ A.T).toarray()
        np.fill_diagonal(A, 0)
        return A, dist

    def get_clust(a, dist, connect):  # L66-74 (changes a in place, as lil indexing does)
        if min_sim is not None:
            a[dist > min_sim] = 0
        if connect is not None:
            a[connect == 0] = 0
        return connected_components(csr_matrix(a), directed=True, connection="weak")

    def means(labels):  # cool_mean L77-81
        return np.stack([data[labels == k].mean(0) for k in range(labels.max() + 1)])

    def merged(labels):
        return None if masks is None else np.stack([masks[labels == k].sum(0) for k in range(labels.max() + 1)])

    adj, dist = clust_rank(data)
    count, labels = get_clust(adj, dist, None if masks is None else released_connect(masks))
    partitions, counts, thresholds = [labels], [count], [min_sim]
    mat, member_masks = means(labels), merged(labels)
    while True:
        adj, dist = clust_rank(mat)
        count, u = get_clust(adj, dist, None if masks is None else released_connect(member_masks))
        labels = u[partitions[-1]]
        thresholds.append(np.max(dist * adj) if doubled else np.max(np.where(adj > 0, dist, 0)))  # L207
        if count == 1 or counts[-1] - count < 1:  # L218-224
            thresholds.pop()
            break
        partitions.append(labels)
        counts.append(count)
        mat, member_masks = means(labels), merged(labels)
    return partitions, counts, thresholds


def released_k(rows, eot, floor=10, doubled=True):
    """train.py cluster_attention L1689-1790: the number of concepts found."""
    x = rows / rows.sum(-1, keepdims=True)
    side = eot.shape[-1]
    partitions, counts, thresholds = released_finch(x, doubled=doubled)
    index = next(i for i in range(len(counts) - 1) if counts[i] >= floor and counts[i + 1] < floor)  # L1703-1706
    labels = partitions[index]
    masks, feats = [], []
    for k in range(labels.max() + 1):
        mask = (labels == k).astype(float).reshape(side, side)
        score = ((mask * eot).sum() / mask.sum()) / eot.mean()  # compute_score L651-655
        if score > 1.0:
            masks.append(mask)
            feats.append(x[labels == k].mean(0))
    if len(masks) <= 1:
        return len(masks)
    merge, _, _ = released_finch(np.stack(feats), min_sim=thresholds[index], masks=np.stack(masks), doubled=doubled)
    return int(merge[-1].max() + 1)


def constructed_attention(seed: int = 136, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Self-attention rows over an 8×8 grid cut into 3–5 nearest-centre regions: uniform noise plus a random
    extra weight inside a pixel's own region; a random end-of-text map min-max normalised."""
    rng = np.random.default_rng(seed)
    regions = int(rng.integers(3, 6))
    cy, cx = rng.integers(0, side, regions), rng.integers(0, side, regions)
    yy, xx = np.mgrid[:side, :side]
    labels = np.stack([(yy - cy[k]) ** 2 + (xx - cx[k]) ** 2 for k in range(regions)]).argmin(0).ravel()
    rows = rng.random((side * side, side * side)) * 0.5 + 0.05
    rows += (labels[:, None] == labels[None, :]) * rng.uniform(0.5, 3)
    eot = rng.random((side, side))
    return rows, (eot - eot.min()) / (eot.max() - eot.min())


def test_merge_threshold_is_the_released_one_and_changes_k():
    """finch.py L207: the merge threshold is max(orig_dist · adj), adj = A·Aᵀ counting mutual first neighbours
    twice; with the plain largest linked distance the same attention gives another K. The 8×8 grid scales
    the floor of train.py L1703-1706 (≥ 10 clusters, < 10 next) to 3."""
    rows, eot = constructed_attention()
    expected = released_k(rows, eot, floor=3)
    plain = released_k(rows, eot, floor=3, doubled=False)
    assert expected != plain, (expected, plain)  # the case tells the two thresholds apart
    masks, features = cluster_concepts(
        torch.from_numpy(rows).float(), torch.from_numpy(eot).float(), ConceptExpressConfig(pre_cluster_floor=3)
    )
    assert masks.shape[0] == features.shape[0] == expected


def test_attention_keeps_the_last_half_of_the_heads():
    """ptp_utils.py L137-140: the store keeps attn[h // 2:] of the (batch·heads, P, P) stack; batch 1 (the
    released --train_batch_size 1): heads H//2 … H−1, averaged (get_self_attention L1663)."""
    from diffusers.models.attention_processor import Attention

    components = build_tiny()
    unet = components.unet
    layer_name = next(n for n in unet.attn_processors if n.endswith("attn1.processor"))
    module = dict(unet.named_modules())[layer_name.removesuffix(".processor")]
    assert isinstance(module, Attention) and module.heads >= 2
    seen = {}

    def record(_m, args, kwargs):
        seen.setdefault("x", args[0] if args else kwargs["hidden_states"])

    module.register_forward_pre_hook(record, with_kwargs=True)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with recording_self_attention(unet, "all", max_side=16, heads="last_half") as maps:
        unet(latents, torch.tensor([0]), encoder_hidden_states=text)
    hidden = seen["x"]
    heads, width = module.heads, module.to_q.weight.shape[0]
    q = (hidden @ module.to_q.weight.T).reshape(1, -1, heads, width // heads).transpose(1, 2)
    k = (hidden @ module.to_k.weight.T).reshape(1, -1, heads, width // heads).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)[0]  # (heads, P, P)
    expected = probs[heads // 2 :].mean(0)
    torch.testing.assert_close(maps.sums[layer_name] / maps.counts[layer_name], expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected, probs.mean(0), atol=1e-5)


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
    rows = torch.where(
        on_object[:, None] > 0, (1 - cohesion) * rows + cohesion * whole / whole.sum(1, keepdim=True).clamp_min(1), rows
    )
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
    expected = torch.tensor(
        [
            [
                0.5
                * (
                    sum(p[i, k] * math.log(p[i, k] / q[0, k]) for k in range(3))
                    + sum(q[0, k] * math.log(q[0, k] / p[i, k]) for k in range(3))
                )
            ]
            for i in range(2)
        ]
    )
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
    assert (
        config.steps,
        config.lr,
        config.weight_decay,
        config.lambda_attention,
        config.weight_contrast,
        config.temperature,
        config.split_tokens,
        config.merge_step,
        config.p_flip,
    ) == (500, 5e-4, 1e-2, 1e-5, 1e-3, 0.07, 5, 100, 0.5)


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
    return {
        f"{prefix}.{name}": tensor.detach().clone()
        for prefix, module in (("unet", components.unet), ("text", components.text_encoder), ("vae", components.vae))
        for name, tensor in module.state_dict().items()
        if not name.endswith("token_embedding.weight")
    }


def test_only_the_tokens_train_and_masks_are_kept(source, tmp_path):
    from clic.concept import LearnedConcept

    components = build_tiny()
    before = frozen_snapshot(components)
    concept = get_method("concept_express").learn(
        components, source, overrides={"steps": 3, "merge_step": 2}, out_dir=tmp_path / "concept", progress=False
    )
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
