"""RoI matching, the automatic source mask and several concepts from one image, on the tiny model (64 px)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clic.concept import LearnedConcept
from clic.learn import ConceptSource, fused_step, learn_concept
from clic.match import (
    REGION_TOKEN_KEY,
    MatchSettings,
    automatic_source_mask,
    learn_region_token,
    match_region,
    source_from_concept,
    threshold_map,
)
from clic.methods.base import get_method
from clic.models import build_tiny
from clic.transfer import ensure_concept

SIZE = 64
FAST = {"steps": 3, "denoise_steps": 10, "read_steps": 4}


def box(top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE)
    mask[top:bottom, left:right] = 1
    return mask


def random_image(seed: int) -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("concept")
    source = ConceptSource(random_image(0), box(16, 8, 48, 40), "chair")
    get_method("clic").learn(build_tiny(), source, overrides={"steps": 3}, seed=0, progress=False, out_dir=out)
    return out


def test_concept_keeps_its_source(concept_dir: Path) -> None:
    source = source_from_concept(LearnedConcept.load(concept_dir))
    assert torch.equal(source.image, random_image(0))
    assert torch.equal(source.masks, box(16, 8, 48, 40)[None])


def test_region_token_starts_at_v_star(concept_dir: Path) -> None:
    concept = LearnedConcept.load(concept_dir)
    # lr 0: the learned w* is its initial vector.
    vector = learn_region_token(build_tiny(), concept, source_from_concept(concept), MatchSettings(steps=1, lr=0.0))
    assert torch.equal(vector, concept.vectors[concept.token])


def test_only_the_region_token_trains(concept_dir: Path) -> None:
    concept = LearnedConcept.load(concept_dir)
    components = build_tiny()
    ensure_concept(components, concept)
    unet_before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in components.text_encoder.state_dict().items()}
    vocab_rows = components.text_encoder.get_input_embeddings().weight.shape[0]

    vector = learn_region_token(components, concept, source_from_concept(concept), MatchSettings(steps=3, lr=1e-3))

    assert not torch.equal(vector, concept.vectors[concept.token])
    unet_after = components.unet.state_dict()
    assert any("custom_diffusion" in k for k in unet_after)  # the concept's K/V were active
    assert all(torch.equal(unet_after[k], v) for k, v in unet_before.items())
    text_after = components.text_encoder.state_dict()
    embed_key = next(k for k in text_before if k.endswith("token_embedding.weight"))
    for key, before in text_before.items():
        after = text_after[key]
        if key == embed_key:
            assert torch.equal(after[:vocab_rows], before)  # v* and the vocabulary unchanged
            assert torch.equal(after[vocab_rows], vector)  # the one new row is w*
        else:
            assert torch.equal(after, before)
    assert torch.equal(concept.arrays[REGION_TOKEN_KEY], vector)


def test_match_region_predicts_a_mask_of_the_target_size(concept_dir: Path, tmp_path: Path) -> None:
    concept = LearnedConcept.load(concept_dir)
    target = random_image(5)
    result = get_method("clic").match(build_tiny(), concept, target, "table", overrides=FAST, seed=0)
    assert result.soft_map.shape == (SIZE, SIZE) and result.mask.shape == (SIZE, SIZE)
    assert result.mask.dtype == torch.bool
    assert 0.0 <= float(result.soft_map.min()) and float(result.soft_map.max()) <= 1.0
    assert float(result.soft_map.max()) == pytest.approx(1.0)
    assert torch.equal(result.mask, result.soft_map >= result.threshold)

    # The learned w* is kept in the concept (and its folder): a second match reuses it.
    concept.save(tmp_path / "with-w")
    reloaded = LearnedConcept.load(tmp_path / "with-w")
    again = match_region(build_tiny(), reloaded, target, "table", MatchSettings(**FAST), seed=0)
    assert torch.equal(again.soft_map, result.soft_map)
    assert reloaded.extras[REGION_TOKEN_KEY] == concept.extras[REGION_TOKEN_KEY]


def test_threshold_policy_on_a_hand_made_map() -> None:
    raw = torch.tensor([[1.0, 2.0], [3.0, 5.0]])  # min-max: 0, .25, .5, 1
    soft, mask = threshold_map(raw, (2, 2), 0.5)
    assert torch.allclose(soft, torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert mask.tolist() == [[False, False], [True, True]]
    assert threshold_map(raw, (2, 2), 0.2)[1].sum() == 3
    soft, mask = threshold_map(torch.full((4, 4), 0.3), (8, 8), 0.5)  # no signal: empty mask
    assert soft.shape == (8, 8) and not mask.any()


def test_match_settings_reject_unknown_and_invalid() -> None:
    with pytest.raises(ValueError, match="unknown match setting"):
        MatchSettings.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="read_steps"):
        MatchSettings.from_dict({"read_steps": 60})
    with pytest.raises(ValueError, match="threshold"):
        MatchSettings.from_dict({"threshold": 1.5})


def test_automatic_source_mask_on_three_images() -> None:
    images = torch.stack([random_image(k) for k in range(3)])
    soft, mask = automatic_source_mask(build_tiny(), images, "necklace", MatchSettings(**FAST), seed=0)
    assert soft.shape == (3, SIZE, SIZE) and mask.shape == (3, SIZE, SIZE) and mask.dtype == torch.bool
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0


def test_multi_image_source_validates_shapes() -> None:
    images = torch.stack([random_image(0), random_image(1)])
    source = ConceptSource(images, torch.ones(2, 1, SIZE, SIZE), "chair")
    assert source.images.shape == (2, 3, SIZE, SIZE) and source.n_tokens == 1
    with pytest.raises(ValueError, match="do not match"):
        ConceptSource(images, torch.ones(3, 1, SIZE, SIZE), "chair")


class RecordingObjective:
    """Wraps an objective and keeps each step's tensors, to recompute a loss by hand."""

    def __init__(self, objective) -> None:
        self.objective = objective
        self.steps: list = []

    @property
    def needs(self):
        return self.objective.needs

    def __call__(self, step):
        loss, values = self.objective(step)
        self.steps.append((step.attention.detach().clone(), step.attention_masks.detach().clone(), values))
        return loss, values


def test_two_concepts_from_one_image(tmp_path: Path) -> None:
    """The necklace → bracelet case: two masks give <v1*>, <v2*>, each attention-supervised by its own mask."""
    necklace, pendant = box(4, 4, 28, 60), box(36, 20, 60, 44)
    source = ConceptSource(random_image(3), torch.stack([necklace, pendant]), "necklace")
    config = get_method("clic").learn_config("paper", {"steps": 3, "augment": {"enabled": False}})
    recorder: list[RecordingObjective] = []

    def recording_step(state, batch, object_word):
        if not recorder:
            recorder.append(RecordingObjective(state.objective))
            state.objective = recorder[0]
        return fused_step(state, batch, object_word)

    concept = learn_concept(
        build_tiny(), source, config, seed=0, step_fn=recording_step, progress=False, out_dir=tmp_path
    )

    assert concept.tokens == ["<v1*>", "<v2*>"]
    assert len(recorder[0].steps) == 3
    for attention, masks, values in recorder[0].steps:
        assert attention.shape[:2] == (1, 2)
        side = attention.shape[-1]
        # Resize(M_k) with the maps' antialiased bilinear filter (paper preset), per token:
        # mean((CA_k − Resize(M_k))²) over both tokens.
        resized = F.interpolate(
            source.masks[None], size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )[0]
        assert torch.equal(masks[0], source.masks)
        hand = ((attention[0] - resized) ** 2).mean()
        assert values["att"] == pytest.approx(float(hand), rel=1e-5)
        assert not torch.allclose(attention[0, 0], attention[0, 1])  # two token columns, not one twice
    assert sorted(p.name for p in tmp_path.glob("learned_embeds-*.safetensors")) == [
        "learned_embeds-v1.safetensors",
        "learned_embeds-v2.safetensors",
    ]
    assert LearnedConcept.load(tmp_path).tokens == ["<v1*>", "<v2*>"]


def test_match_reads_steps_from_the_end_and_t_start_is_a_deprecated_alias(capsys: pytest.CaptureFixture[str]) -> None:
    """`t_start` means "steps kept" (transfer) only: match's count from the end is `--read-steps`; the old
    `clic match --t-start` maps to it with a warning, and the new name wins when both are given."""
    from clic import cli, cli_tasks

    base = ["match", "--concept", "c", "--image", "i.png", "--object", "chair", "--out", "o"]
    parser = cli.build_parser()
    assert cli_tasks._match_overrides(parser.parse_args([*base, "--read-steps", "7"])) == {"read_steps": 7}
    assert capsys.readouterr().err == ""
    assert cli_tasks._match_overrides(parser.parse_args([*base, "--t-start", "6"])) == {"read_steps": 6}
    assert "--t-start` is deprecated: use --read-steps" in capsys.readouterr().err
    assert cli_tasks._match_overrides(parser.parse_args([*base, "--t-start", "6", "--read-steps", "7"])) == {
        "read_steps": 7
    }
    with pytest.raises(ValueError, match=r"read_steps must lie in \[1, 10\]"):
        MatchSettings.from_dict({"denoise_steps": 10, "read_steps": 11})
