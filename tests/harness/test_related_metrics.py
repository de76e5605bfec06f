"""The related methods' metrics on hand-made 64 px inputs with tiny random-weight models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.metrics import build_metric, models
from harness.metrics.base import TINY_RANDOM, MetricSettings, Sample, declaration
from harness.metrics.concept_classification import top_k_accuracy
from harness.metrics.esr import COLOUR_SHARE, colour_share, requested_colour, zero_shot_success
from harness.metrics.masked_similarity import masked_crop

SIZE = 64


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> MetricSettings:
    cache = str(tmp_path_factory.mktemp("empty-cache"))  # never a developer's real weights
    return MetricSettings(allow_random=True, options={"clip": {"cache_dir": cache}, "dino": {"cache_dir": cache}})


def noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((SIZE, SIZE, 3), dtype=np.float32)


def box(top: int, left: int, side: int = 20) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def values(metric, sample: Sample) -> dict[str, float]:
    return {v.name: v.value for v in metric.compute([sample])[0]}


@pytest.mark.parametrize(
    "name, fg, outside", [("clip_masked", "clip_i_f", None), ("dino_masked", "dino_f", "dino_outside")]
)
def test_masked_similarity_on_transfers(settings: MetricSettings, name: str, fg: str, outside: str | None) -> None:
    metric = build_metric(name, settings)
    assert metric.weights == TINY_RANDOM
    target, target_mask = noise_image(1), box(30, 34)
    source, source_mask = noise_image(2), box(4, 6)
    source[source_mask] = target[target_mask]  # the concept region of the source is the target's region
    base = {
        "job_id": "j",
        "task": "transfer",
        "source_image": source,
        "source_mask": source_mask,
        "target_mask": target_mask,
        "target_image": target,
    }

    same = values(metric, Sample(output_image=target.copy(), **base))
    assert same[fg] == pytest.approx(1.0, abs=1e-5)
    # A transfer has no "*_b": SingleInsert's background score is defined on generations; the preservation of the
    # target outside the edit keeps its own name (clip_i_outside in clip_image, dino_outside here).
    assert not any(key.endswith("_b") for key in same)
    if outside is not None:
        assert same[outside] == pytest.approx(1.0, abs=1e-5)

    inside_changed = target.copy()
    inside_changed[target_mask] = noise_image(4)[target_mask]
    scored = values(metric, Sample(output_image=inside_changed, **base))
    assert scored[fg] < 0.999  # the foreground moved
    if outside is not None:
        assert scored[outside] == pytest.approx(1.0, abs=1e-5)


def object_on_plain_background(background: tuple[float, float, float], seed: int, mask: np.ndarray) -> np.ndarray:
    """A saturated noisy object (red-dominant) under ``mask`` on a uniform background colour."""
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:] = background
    rng = np.random.default_rng(seed)
    texture = np.stack(
        [
            rng.uniform(0.6, 1.0, (SIZE, SIZE)),
            rng.uniform(0.0, 0.15, (SIZE, SIZE)),
            rng.uniform(0.0, 0.3, (SIZE, SIZE)),
        ],
        axis=-1,
    ).astype(np.float32)
    image[mask] = texture[mask]
    return image


@pytest.mark.parametrize("name, fg, bg", [("clip_masked", "clip_i_f", "clip_i_b"), ("dino_masked", "dino_f", "dino_b")])
def test_background_similarity_on_generations_is_higher_when_the_background_is_copied(
    settings: MetricSettings, name: str, fg: str, bg: str
) -> None:
    """SingleInsert's CLIP-I-b / DINO-b: source background vs generated background — copying the source's
    background scores higher, i.e. worse (lower is better)."""
    metric = build_metric(name, settings)
    mask = box(20, 22, side=24)
    source = object_on_plain_background((0.85, 0.85, 0.95), 0, mask)
    base = {"job_id": "g", "task": "generate", "source_image": source, "source_mask": mask, "object_word": "chair"}
    copied = values(metric, Sample(output_image=source.copy(), **base))
    different = values(metric, Sample(output_image=object_on_plain_background((0.2, 0.6, 0.3), 0, mask), **base))
    assert copied[bg] == pytest.approx(1.0, abs=1e-5)  # the generation's background is the source's
    assert copied[bg] > different[bg]
    assert copied[fg] == pytest.approx(1.0, abs=1e-5) and different[fg] == pytest.approx(1.0, abs=1e-5)
    from harness.metrics.base import declaration

    directions = declaration(type(metric)).values  # value name -> higher is better, as the metric declares
    assert not directions[bg] and directions[fg]


def test_masked_crop_greys_the_outside_and_crops_the_box() -> None:
    image, mask = noise_image(5), np.zeros((SIZE, SIZE), dtype=bool)
    mask[10:20, 30:34] = True
    mask[12, 30] = False
    crop = masked_crop(image, mask)
    assert crop.shape == (10, 4, 3)
    assert np.all(crop[2, 0] == 0.5) and np.array_equal(crop[0, 0], image[10, 30])
    assert masked_crop(image, np.zeros_like(mask)) is None


def test_dino_fails_fast_without_weights(tmp_path: Path) -> None:
    with pytest.raises(models.WeightsUnavailable, match="dino.pretrained"):
        build_metric("dino_masked", MetricSettings(options={"dino": {"cache_dir": str(tmp_path)}}))


def test_esr_colour_oracle() -> None:
    image = np.full((SIZE, SIZE, 3), 0.97, dtype=np.float32)  # white
    image[:, : SIZE // 2] = (0.9, 0.05, 0.05)  # half red
    assert colour_share(image, "red") == pytest.approx(0.5) and colour_share(image, "white") == pytest.approx(0.5)
    assert colour_share(image, "blue") == 0.0
    assert requested_colour("a red chair with <v*> style") == "red"
    assert requested_colour("a photo of an reddish vase") is None  # whole words only
    few_red = np.full((SIZE, SIZE, 3), 0.97, dtype=np.float32)
    few_red[: int(SIZE * COLOUR_SHARE) - 2] = (0.9, 0.05, 0.05)
    assert colour_share(few_red, "red") < COLOUR_SHARE


def test_esr_values(settings: MetricSettings) -> None:
    metric = build_metric("esr", settings)
    plain = np.full((SIZE, SIZE, 3), 0.97, dtype=np.float32)  # white background
    red_object = plain.copy()
    red_object[16:48, 16:48] = (0.9, 0.05, 0.05)  # a red object: a quarter of the image, all of the object
    samples = [
        Sample("a", "generate", output_image=red_object, prompt="a red chair with <v*> style", object_word="chair"),
        Sample("b", "generate", output_image=red_object, prompt="a blue chair with <v*> style", object_word="chair"),
        Sample(
            "c",
            "generate",
            output_image=noise_image(6),
            prompt="a photo of an vase, with <v*> style",
            object_word="vase",
        ),
        Sample("d", "transfer", output_image=red_object, prompt="a red chair", object_word="chair"),
    ]
    scored = metric.compute(samples)
    assert [v.value for v in scored[1]] == [0.0]  # the colour target fails whatever CLIP says
    assert len(scored[0]) == 1 and len(scored[2]) == 1 and scored[3] == []
    # Every target must hold: the colour one (met here) and the object one (the zero-shot CLIP decision).
    clip = metric.clip
    from harness.metrics.clip_sim import embed_images, embed_texts

    words = list(dict.fromkeys([*metric.candidates, "chair", "vase"]))
    text = embed_texts(clip, [f"a photo of a {w}" for w in words]).numpy()
    object_met = zero_shot_success(embed_images(clip, [red_object]).numpy()[0], text, words.index("chair"))
    assert scored[0][0].value == float(object_met)


def shipped_generation() -> tuple[np.ndarray, np.ndarray]:
    """A shipped furniture source (a plain-background object) and its object's mask, recovered exactly by
    comparing with the background colour read from the corner."""
    from PIL import Image

    root = Path(__file__).resolve().parents[2] / "manifests" / "furniture" / "images"
    image = np.asarray(Image.open(root / "furniture-s0-002_target.png").convert("RGB"), dtype=np.float32) / 255
    object_mask = np.abs(image - image[0, 0]).max(axis=-1) > 0.02
    return image, object_mask


def test_esr_colour_counts_only_inside_the_generated_object() -> None:
    from harness.metrics.esr import colour_edit_success

    image, object_mask = shipped_generation()
    assert 0.05 < object_mask.mean() < 0.6
    red = np.array((0.85, 0.1, 0.1), dtype=np.float32)
    red_background = image.copy()
    red_background[~object_mask] = red
    assert colour_share(red_background, "red") >= COLOUR_SHARE  # the old whole-image rule passed it
    assert not colour_edit_success(red_background, "red")  # a red background outside the object fails
    red_object = image.copy()
    red_object[object_mask] = red
    assert colour_edit_success(red_object, "red")
    assert not colour_edit_success(image, "red")  # the shipped chair is not red


def test_zero_shot_decision() -> None:
    texts = np.eye(3)
    assert zero_shot_success(np.array([0.1, 0.9, 0.2]), texts, 1)
    assert not zero_shot_success(np.array([0.1, 0.9, 0.2]), texts, 2)
    assert not zero_shot_success(np.array([0.5, 0.5, 0.0]), texts, 0)  # a tie is not a success


def test_top_k_accuracy_by_hand() -> None:
    similarities = torch.tensor([[0.9, 0.1, 0.0, 0.2], [0.8, 0.7, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 0])
    assert top_k_accuracy(similarities, labels, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(similarities, labels, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(similarities, labels, 3) == pytest.approx(2 / 3)  # row 2's own concept ranks last


def test_concept_classification_constructed_case(settings: MetricSettings) -> None:
    metric = build_metric("concept_classification", settings)
    assert declaration(type(metric)).group_by == "concepts"
    concepts = []
    for k in range(4):  # four concepts: distinct sources and regions
        source, mask = noise_image(10 + k), box(4 + 8 * k, 6 + 5 * k, side=16 + 4 * k)
        concepts.append((source, mask, masked_crop(source, mask)))

    def sample(index: int, source_of: int, output: np.ndarray) -> Sample:
        source, mask, _ = concepts[source_of]
        return Sample(f"g{index}", "generate", output_image=output, source_image=source, source_mask=mask)

    # Each generation is exactly its own concept's region: its prototype, so SIM^I = 1 and ACC¹ = ACC³ = 1.
    right = {v.name: v.value for v in metric.compute_group([sample(k, k, concepts[k][2]) for k in range(4)])}
    assert right["sim_i"] == pytest.approx(1.0, abs=1e-5) and right["acc1"] == 1.0 and right["acc3"] == 1.0
    assert -1.0 <= right["sim_c"] <= 1.0
    # Each generation shows the *next* concept's region: never its own as top-1.
    wrong = {v.name: v.value for v in metric.compute_group([sample(k, k, concepts[(k + 1) % 4][2]) for k in range(4)])}
    assert wrong["acc1"] == 0.0 and wrong["sim_i"] < 1.0
    assert right["acc1_chance"] == pytest.approx(1 / 4) and right["acc3_chance"] == pytest.approx(3 / 4)
    # One concept: SIM only (no classification among one class).
    single = {v.name for v in metric.compute_group([sample(0, 0, concepts[0][2])])}
    assert single == {"sim_i", "sim_c"}
