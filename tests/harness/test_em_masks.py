"""EM token/mask learning: the dense CRF, what trains, the step's loss by hand, the E-step schedule, end to end;
and the estimated-mask IoU metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import square_mask, unet_with_token_maps

from clic.attention import AttentionCapture
from clic.crf import DenseCRFSettings, dense_crf, refine_masks
from clic.learn import ConceptSource, StepBatch, TrainState, encode_text, format_prompt
from clic.losses import Objective
from clic.methods.base import get_method
from clic.methods.em_masks import EMLoop, EMSettings
from clic.models import build_tiny
from clic.tokens import ConceptTokens
from harness.metrics import build_metric
from harness.metrics.base import Sample

FAST_EM = {"e_every": 2, "attention_timesteps": 2, "crf": {"max_side": 32, "iterations": 3}}


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


def disc_scene(side: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (3, side, side) in [0, 1] of a disc on a contrasting, slightly noisy background, and the disc."""
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = (((ys - side * 0.47) ** 2 + (xs - side * 0.53) ** 2) < (side * 0.22) ** 2).float()
    colours = torch.stack([0.2 + 0.6 * disc, 0.7 - 0.5 * disc, torch.full_like(disc, 0.5)])
    return (colours + 0.05 * torch.randn(3, side, side, generator=generator)).clamp(0, 1), disc


# ------------------------------------------------------------------------------------------ dense CRF
def test_crf_pulls_a_noisy_blurred_mask_toward_the_true_shape():
    image, disc = disc_scene()
    generator = torch.Generator().manual_seed(1)
    blurred = F.avg_pool2d(disc[None, None], 9, stride=1, padding=4)[0, 0]
    noisy = (blurred + 0.45 * torch.randn(disc.shape, generator=generator)).clamp(0, 1)
    before = iou(noisy >= 0.5, disc)
    after = iou(refine_masks(image, noisy[None], 0.5)[0], disc)
    assert before < 0.6
    assert after > before + 0.3 and after > 0.9


def test_crf_with_zero_pairwise_weight_keeps_the_unary_decision():
    image, disc = disc_scene(24)
    unary = torch.rand(2, 24, 24, generator=torch.Generator().manual_seed(3))
    unary = unary / unary.sum(0, keepdim=True)
    marginals = dense_crf(image, unary, DenseCRFSettings(appearance_weight=0.0, smoothness_weight=0.0))
    torch.testing.assert_close(marginals, unary, atol=1e-5, rtol=1e-4)


def test_crf_runs_at_its_working_side_and_returns_the_input_size():
    image, disc = disc_scene(96)
    unary = torch.stack([1 - disc, disc]) * 0.8 + 0.1
    out = dense_crf(image, unary, DenseCRFSettings(max_side=32))
    assert out.shape == (2, 96, 96)
    torch.testing.assert_close(out.sum(0), torch.ones(96, 96), atol=1e-4, rtol=0)
    assert iou(out[1], disc) > 0.9


# ------------------------------------------------------------------------------------------ the method
@pytest.fixture(scope="module")
def source() -> ConceptSource:
    image, disc = disc_scene()
    return ConceptSource(image * 2 - 1, disc, "chair")


def frozen_snapshot(components) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}": tensor.detach().clone()
        for prefix, module in (("unet", components.unet), ("text", components.text_encoder), ("vae", components.vae))
        for name, tensor in module.state_dict().items()
        if not name.endswith("token_embedding.weight")
    }


@pytest.mark.parametrize("preset,trains_kv", [("default", True), ("tokens-only", False)])
def test_what_trains(source, preset, trains_kv):
    components = build_tiny()
    before = frozen_snapshot(components)
    concept = get_method("em_masks").learn(
        components, source, preset=preset, overrides={"steps": 3, "em": FAST_EM}, progress=False
    )
    after = frozen_snapshot(components)
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # model weights never move
    kinds = {key.rsplit(".processor.", 1)[1] for key in concept.attention_state}
    assert kinds == ({"to_k_custom_diffusion.weight", "to_v_custom_diffusion.weight"} if trains_kv else set())
    if trains_kv:
        modules = dict(components.unet.named_modules())
        moved = [
            key
            for key, tensor in concept.attention_state.items()
            if "to_k" in key and not torch.equal(tensor, modules[key.split(".processor.")[0]].to_k.weight)
        ]
        assert moved, "the K/V copies did not train"


def _state(components, config) -> TrainState:
    tokens = ConceptTokens(components.tokenizer, components.text_encoder, ["<v*>"], ["chair"])
    capture = AttentionCapture(components.unet, config.capture_layers, train_kv=config.train_kv)
    return TrainState(components, tokens, capture, Objective(config.terms), config, 8)


def test_step_matches_hand_computation_on_the_loop_masks(source):
    """The M-step is masked diffusion over the union of the EM masks + 1e-2 · attention loss toward them;
    the batch's own (placeholder) masks play no part."""
    components = build_tiny()
    method = get_method("em_masks")
    config = method.learn_config()
    state = _state(components, config)
    em_masks = square_mask(8, 8, 24)[None]
    loop = EMLoop(source.image, em_masks, EMSettings(e_every=1000), seed=0)
    generator = torch.Generator().manual_seed(0)
    batch = StepBatch(
        latents=torch.randn(1, 4, 16, 16, generator=generator),
        masks=torch.ones(1, 64, 64),
        image=source.image,
        suffix="",
        timestep=torch.tensor([400]),
        noise=torch.randn(1, 4, 16, 16, generator=generator),
    )
    loss, values = loop(state, batch, "chair")
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    ab = torch.cumprod(1 - betas, 0)[400]
    x_t = ab.sqrt() * batch.latents + (1 - ab).sqrt() * batch.noise
    text, ids = encode_text(components, [format_prompt(config.context_prompt, "chair", ["<v*>"])])
    position = int((ids[0] == components.tokenizer.convert_tokens_to_ids("<v*>")).nonzero()[0, 0])
    # Rahman et al. §3: the token's maps over all cross-attention layers, from the layers' own inputs and weights;
    # each brought to the 8×8 side (bilinear, antialiased when shrinking) and averaged
    eps, layer_maps = unet_with_token_maps(components, x_t, batch.timestep, text, [position])
    grids = [
        F.interpolate(m[None], size=(8, 8), mode="bilinear", align_corners=False, antialias=m.shape[-1] > 8)
        for m in layer_maps.values()
    ]
    maps = torch.stack(grids).mean(0)
    union = F.interpolate(em_masks[None], size=(16, 16), mode="area")
    masked = ((union * (eps - batch.noise)) ** 2).mean()
    target = F.interpolate(em_masks[None], size=(8, 8), mode="area")
    attention = ((maps - target) ** 2).mean()
    assert values["masked_diffusion"] == pytest.approx(float(masked), rel=1e-5)
    assert values["att"] == pytest.approx(float(attention), rel=1e-5)
    assert float(loss) == pytest.approx(float(masked + 1e-2 * attention), rel=1e-5)
    assert values["mask_area"] == pytest.approx(float(em_masks.mean()))


def test_joint_phase_starts_after_the_token_phase_and_keeps_the_masks_fixed(source, tmp_path):
    """Rahman et al. §3: token-only EM first (tokens alone train; masks re-estimated every e_every steps), then
    tokens + cross-attention weights on the last masks, which no longer change."""
    from clic.concept import LearnedConcept

    method = get_method("em_masks")
    token_phase, joint_phase = method.learn_config().schedule()
    assert token_phase.attention_lr == 0 and joint_phase.attention_lr > 0 and token_phase.token_lr > 0
    phases = [{"steps": 5, "token_lr": 5e-4}, {"steps": 3, "token_lr": 2e-6, "attention_lr": 2e-6}]
    concept = method.learn(
        build_tiny(), source, overrides={"phases": phases, "em": FAST_EM}, out_dir=tmp_path / "concept", progress=False
    )
    em = concept.extras["em"]
    assert em["e_steps"] == 3 and em["e_step_at"] == [0, 2, 4] and em["token_steps"] == 5  # none in the joint phase
    areas = [row["mask_area"] for row in concept.loss_log]
    assert len(areas) == 8 and areas[5:] == [areas[4]] * 3  # the joint phase trains on the last E-step's masks
    loaded = LearnedConcept.load(tmp_path / "concept")
    mask = loaded.arrays["estimated_mask_0"]
    assert mask.shape == (64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    torch.testing.assert_close(loaded.arrays["source_masks"][0], mask)


def test_user_init_preset_starts_from_the_user_mask(source):
    concept = get_method("em_masks").learn(
        build_tiny(), source, preset="user-init", overrides={"steps": 2, "em": {"e_every": 100}}, progress=False
    )
    assert concept.extras["em"]["e_steps"] == 0
    torch.testing.assert_close(concept.arrays["estimated_mask_0"], source.masks[0])


def test_unknown_em_setting_is_one_clear_error(source):
    with pytest.raises(ValueError, match="unknown EM setting.*e_evry"):
        get_method("em_masks").learn(build_tiny(), source, overrides={"steps": 1, "em": {"e_evry": 3}}, progress=False)


def test_learn_then_transfer_end_to_end(source):
    method = get_method("em_masks")
    concept = method.learn(build_tiny(), source, overrides={"steps": 2, "em": FAST_EM}, progress=False)
    target = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    result = method.transfer(
        build_tiny(), concept, target, square_mask(20, 20, 30), "chair", overrides={"steps": 4, "t_start": 3}
    )
    assert result.image.shape == (3, 64, 64)
    assert 0 <= float(result.image.min()) and float(result.image.max()) <= 1


# ------------------------------------------------------------------------------------------ the metric
def test_estimated_mask_iou_scores_the_best_matching_mask():
    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:6] = True
    half = np.zeros((8, 8), bool)
    half[2:6, 2:4] = True
    unrelated = np.zeros((4, 4), bool)  # another size: resized (nearest) to the truth's
    unrelated[0, 0] = True
    metric = build_metric("estimated_mask_iou")
    sample = Sample(job_id="j", task="transfer", source_mask=truth, estimated_masks=[unrelated, half])
    values = {v.name: v.value for v in metric.compute([sample])[0]}
    assert values == {"estimated_mask_iou": pytest.approx(0.5), "estimated_mask_count": 2.0}
    assert metric.compute([Sample(job_id="k", task="transfer", source_mask=truth)]) == [[]]
    with pytest.raises(ValueError, match="estimated_masks\\[0\\]"):
        metric.compute([Sample(job_id="b", task="transfer", source_mask=truth, estimated_masks=[half.astype(float)])])
