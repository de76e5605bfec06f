"""Metrics on 64x64 images with tiny random-weight models: known values, policies, batching, loading."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.metrics import REGISTRY, build_metric, metric_class, models
from harness.metrics.base import TINY_RANDOM, Metric, MetricSettings, MetricValue, Sample, check_image, declaration
from harness.metrics.mask_iou import EMPTY_UNION_IOU, MaskIoU
from harness.metrics.ssim_psnr import PSNR_CAP_DB

SIZE = 64
MODEL_METRICS = ("clip_image", "clip_text", "lpips", "lpips_diversity")


@pytest.fixture(scope="module")
def empty_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the CLIP and torch-hub caches at an empty folder: tests never see a developer's real weights."""
    cache = tmp_path_factory.mktemp("empty-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(cache / "torch"))
        yield cache


@pytest.fixture(scope="module")
def random_settings(empty_caches: Path) -> MetricSettings:
    return MetricSettings(allow_random=True, options={"clip": {"cache_dir": str(empty_caches / "clip")}})


@pytest.fixture(scope="module")
def metrics(random_settings: MetricSettings) -> dict[str, Any]:
    """One instance per registered metric of this package (the oracle metrics live elsewhere)."""
    names = ("clip_image", "clip_text", "lpips", "lpips_diversity", "ssim_psnr", "mask_iou")
    return {name: build_metric(name, random_settings) for name in names}


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((SIZE, SIZE, 3), dtype=np.float32)


def box_mask(top: int, bottom: int, left: int, right: int, size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def transfer(
    target: np.ndarray, output: np.ndarray, mask: np.ndarray, source: np.ndarray | None = None, job_id: str = "job"
) -> Sample:
    return Sample(
        job_id=job_id,
        task="transfer",
        output_image=output,
        target_image=target,
        target_mask=mask,
        source_image=target if source is None else source,
        source_mask=mask,
    )


def values(result: list[MetricValue]) -> dict[str, float]:
    return {value.name: value.value for value in result}


# --- contract ---------------------------------------------------------------------------------------


def test_every_metric_declares_the_contract(metrics: dict[str, Any]) -> None:
    for registry_name, metric in metrics.items():
        assert metric.name == registry_name and REGISTRY[registry_name].endswith(type(metric).__name__)
        assert metric.version and metric.scale and metric.tasks
        if registry_name in MODEL_METRICS:
            assert metric.weights == TINY_RANDOM
    assert "raw" in metrics["clip_image"].scale and "x100" in metrics["clip_image"].scale
    assert f"lpips-{models.LPIPS_PACKAGE_VERSION}-alex" in metrics["lpips"].version
    assert declaration(type(metrics["lpips_diversity"])).group_by == "seeds"
    assert all(isinstance(metric, Metric) for name, metric in metrics.items() if name != "lpips_diversity")


def test_every_metric_declares_the_direction_of_each_value_it_emits(metrics: dict[str, Any]) -> None:
    declared = {name: declaration(metric_class(name)) for name in REGISTRY}
    assert all(d.values and all(isinstance(v, bool) for v in d.values.values()) for d in declared.values())
    # What "better" means where it is not "higher": the edit should change the region and nothing else.
    lower = {value for d in declared.values() for value, higher in d.values.items() if not higher}
    # SingleInsert's CLIP-I-b / DINO-b: source vs generated background, lower is better disentanglement
    assert lower == {"lpips_outside", "pattern_leakage", "clip_i_b", "dino_b"}
    # Each value a per-job metric emits on a transfer is declared (group metrics are checked in their tests).
    sample = Sample(
        "j",
        "transfer",
        output_image=image(1),
        source_image=image(0),
        target_image=image(2),
        source_mask=np.ones((64, 64), bool),
        target_mask=np.eye(64, dtype=bool) | True,
        gt_mask=np.ones((64, 64), bool),
        predicted_mask=np.ones((64, 64), bool),
    )
    for name, metric in metrics.items():  # the metrics this file builds with random weights
        if declared[name].group_by is None and "transfer" in declared[name].tasks:
            emitted = {value.name for value in metric.compute([sample])[0]}
            assert emitted <= set(declared[name].values), (name, emitted)
    with pytest.raises(TypeError, match="does not declare values"):
        declaration(type("Undeclared", (), {"name": "u", "version": "1", "scale": "", "tasks": frozenset()}))


def test_check_image_rejects_0_255_uint8(metrics: dict[str, Any]) -> None:
    as_bytes = (image(0) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match="floats in \\[0, 1\\]"):
        check_image(as_bytes)
    with pytest.raises(ValueError, match="target_image"):
        metrics["ssim_psnr"].compute([transfer(as_bytes, image(1), box_mask(0, 8, 0, 8))])
    with pytest.raises(ValueError, match="values must lie in"):
        metrics["lpips"].compute([transfer(image(0) * 255, image(1), box_mask(0, 8, 0, 8))])


def test_samples_without_inputs_or_of_other_tasks_get_no_values(metrics: dict[str, Any]) -> None:
    bare = Sample(job_id="bare", task="transfer", output_image=image(0))
    wrong_task = Sample(job_id="gen", task="generate", output_image=image(0), prompt="a chair")
    for name in ("clip_image", "lpips", "ssim_psnr", "mask_iou"):
        assert metrics[name].compute([bare, wrong_task]) == [[], []]
    no_prompt = Sample(job_id="no-prompt", task="generate", output_image=image(0))
    assert metrics["clip_text"].compute([bare, no_prompt]) == [[], []]


# --- mask IoU ---------------------------------------------------------------------------------------


def test_mask_iou_of_known_masks(metrics: dict[str, Any]) -> None:
    top_half, left_half = box_mask(0, 32, 0, 64), box_mask(0, 64, 0, 32)
    result = values(metrics["mask_iou"].compute([Sample("m", "match", predicted_mask=top_half, gt_mask=left_half)])[0])
    assert result == {"mask_iou": 1024 / 3072, "mask_intersection": 1024.0, "mask_union": 3072.0}

    empty = np.zeros((SIZE, SIZE), dtype=bool)
    result = values(metrics["mask_iou"].compute([Sample("e", "match", predicted_mask=empty, gt_mask=empty)])[0])
    assert result == {"mask_iou": EMPTY_UNION_IOU, "mask_intersection": 0.0, "mask_union": 0.0}
    assert EMPTY_UNION_IOU == 1.0


def test_mask_iou_thresholds_soft_maps_at_one_half_and_resizes_nearest(metrics: dict[str, Any]) -> None:
    soft = np.zeros((SIZE, SIZE), dtype=np.float32)
    soft[:, :16] = 0.7  # in
    soft[:, 16:32] = 0.5  # in: the threshold is inclusive
    soft[:, 32:48] = 0.49  # out
    sample = Sample("s", "match", predicted_mask=soft, gt_mask=box_mask(0, 64, 0, 16))
    result = values(metrics["mask_iou"].compute([sample])[0])
    assert result == {"mask_iou": 1024 / 2048, "mask_intersection": 1024.0, "mask_union": 2048.0}

    small_prediction = box_mask(0, 16, 0, 32, size=(32, 32))  # top half at 32 px -> top half at 64 px
    result = values(
        metrics["mask_iou"].compute(
            [Sample("r", "match", predicted_mask=small_prediction, gt_mask=box_mask(0, 32, 0, 64))]
        )[0]
    )
    assert result["mask_iou"] == 1.0 and result["mask_union"] == 2048.0

    with pytest.raises(ValueError, match="soft mask"):
        MaskIoU(MetricSettings()).compute(
            [Sample("bad", "match", predicted_mask=soft * 3, gt_mask=box_mask(0, 8, 0, 8))]
        )


# --- SSIM / PSNR ------------------------------------------------------------------------------------


def test_ssim_psnr_of_identical_images(metrics: dict[str, Any]) -> None:
    target = image(0)
    result = values(metrics["ssim_psnr"].compute([transfer(target, target.copy(), box_mask(16, 32, 16, 32))])[0])
    assert result["ssim_outside"] == pytest.approx(1.0, abs=1e-6)
    assert result["psnr_outside"] == PSNR_CAP_DB


def test_psnr_outside_against_hand_computed_value(metrics: dict[str, Any]) -> None:
    target = np.full((SIZE, SIZE, 3), 0.5, dtype=np.float32)
    mask = box_mask(0, 16, 0, 16)  # 256 px
    output = target.copy()
    output[mask] = 1.0  # inside changes never count
    output[32:, :] += 0.2  # 2048 outside px shifted by 0.2
    mse = 2048 * 0.2**2 / (SIZE * SIZE - 256)
    result = values(metrics["ssim_psnr"].compute([transfer(target, output, mask)])[0])
    assert result["psnr_outside"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)  # 16.709 dB
    assert result["ssim_outside"] < 1.0


def test_ssim_outside_ignores_changes_inside_and_full_masks_give_nothing(metrics: dict[str, Any]) -> None:
    target, mask = image(0), box_mask(16, 40, 20, 44)
    output = target.copy()
    output[mask] = image(1)[mask]
    result = values(metrics["ssim_psnr"].compute([transfer(target, output, mask)])[0])
    assert result == {"ssim_outside": pytest.approx(1.0, abs=1e-6), "psnr_outside": PSNR_CAP_DB}
    assert metrics["ssim_psnr"].compute([transfer(target, output, np.ones((SIZE, SIZE), dtype=bool))]) == [[]]


# --- CLIP -------------------------------------------------------------------------------------------


def test_clip_image_similarity_of_an_image_with_itself_is_one(metrics: dict[str, Any]) -> None:
    picture = image(0)
    result = values(metrics["clip_image"].compute([transfer(picture, picture.copy(), box_mask(10, 30, 5, 50))])[0])
    assert set(result) == {"clip_i_roi", "clip_i_outside"}
    assert result["clip_i_roi"] == pytest.approx(1.0, abs=1e-5)
    assert result["clip_i_outside"] == pytest.approx(1.0, abs=1e-5)


def test_clip_text_similarity_is_a_raw_cosine(metrics: dict[str, Any]) -> None:
    samples = [
        Sample(f"g{seed}", "generate", output_image=image(seed), prompt=prompt)
        for seed, prompt in enumerate(["a photo of a chair", "a golden ring", "a brick building"])
    ]
    for result in metrics["clip_text"].compute(samples):
        assert [value.name for value in result] == ["clip_t"]
        assert -1.0 <= result[0].value <= 1.0


def test_clip_batched_scores_equal_one_by_one_scores(metrics: dict[str, Any]) -> None:
    samples = [
        transfer(
            image(seed),
            image(seed + 10),
            box_mask(8, 40, 8 + seed, 30 + 2 * seed),
            source=image(seed + 20),
            job_id=f"j{seed}",
        )
        for seed in range(5)
    ]
    batched = metrics["clip_image"].compute(samples)
    for sample, batch_result in zip(samples, batched):
        single = values(metrics["clip_image"].compute([sample])[0])
        assert values(batch_result) == pytest.approx(single, abs=1e-5)


# --- LPIPS ------------------------------------------------------------------------------------------


def test_lpips_of_identical_images_is_zero(metrics: dict[str, Any]) -> None:
    picture = image(0)
    result = values(metrics["lpips"].compute([transfer(picture, picture.copy(), box_mask(16, 48, 16, 48))])[0])
    assert result == {"lpips_inside": 0.0, "lpips_outside": 0.0}


def test_lpips_outside_stays_zero_when_only_the_inside_changed(metrics: dict[str, Any]) -> None:
    target, mask = image(0), box_mask(16, 40, 20, 44)
    output = target.copy()
    output[mask] = image(1)[mask]
    result = values(metrics["lpips"].compute([transfer(target, output, mask)])[0])
    assert result["lpips_inside"] > 0.0
    assert result["lpips_outside"] == pytest.approx(0.0, abs=1e-6)

    output[~mask] = image(2)[~mask]  # now the outside changes too
    assert values(metrics["lpips"].compute([transfer(target, output, mask)])[0])["lpips_outside"] > 0.0


def test_lpips_batches_mixed_sizes_like_single_samples(metrics: dict[str, Any]) -> None:
    samples = [transfer(image(seed), image(seed + 10), box_mask(8, 40, 8, 40), job_id=f"j{seed}") for seed in range(3)]
    wide = np.random.default_rng(9).random((48, 80, 3), dtype=np.float32)
    samples.append(transfer(wide, wide[::-1].copy(), box_mask(0, 24, 0, 40, size=(48, 80)), job_id="wide"))
    batched = metrics["lpips"].compute(samples)
    for sample, batch_result in zip(samples, batched):
        assert values(batch_result) == pytest.approx(values(metrics["lpips"].compute([sample])[0]), abs=1e-5)


def test_lpips_diversity(metrics: dict[str, Any]) -> None:
    diversity = metrics["lpips_diversity"]

    def generated(pictures: list[np.ndarray]) -> list[Sample]:
        return [Sample(f"g{i}", "generate", output_image=p, group="pair-1/clic") for i, p in enumerate(pictures)]

    identical = diversity.compute_group(generated([image(0)] * 4))
    assert [(value.name, value.value) for value in identical] == [("lpips_diversity", 0.0)]
    different = diversity.compute_group(generated([image(seed) for seed in range(4)]))
    assert [value.name for value in different] == ["lpips_diversity"] and different[0].value > 0.0
    assert diversity.compute_group(generated([image(0)])) == []
    with pytest.raises(ValueError, match="several groups"):
        diversity.compute_group(
            [
                Sample("a", "generate", output_image=image(0), group="x"),
                Sample("b", "generate", output_image=image(1), group="y"),
            ]
        )


# --- model loading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_METRICS)
def test_a_metric_instance_loads_its_model_once(
    name: str, random_settings: MetricSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "_SHARED_CLIP", {})  # as in a new metric actor
    kind = "clip" if name.startswith("clip") else "lpips"
    before = models.LOAD_COUNT[kind]
    metric = build_metric(name, random_settings)
    batch = [Sample(f"g{seed}", "generate", output_image=image(seed), prompt="a chair", group="g") for seed in range(3)]
    for _ in range(4):
        if declaration(type(metric)).group_by is not None:
            metric.compute_group(batch)
        else:
            metric.compute(batch)
    assert models.LOAD_COUNT[kind] - before == 1


def test_missing_real_weights_fail_fast_with_a_clear_error(empty_caches: Path, no_network) -> None:
    strict = MetricSettings(allow_random=False, options={"clip": {"cache_dir": str(empty_caches / "clip")}})
    missing_tag = "ViT-B-32/openai .*not in the local cache.*--allow-random-metrics"
    with pytest.raises(models.WeightsUnavailable, match=missing_tag):
        build_metric("clip_image", strict)
    with pytest.raises(models.WeightsUnavailable, match="neither a local file nor a known open_clip tag"):
        missing_file = str(empty_caches / "missing.safetensors")
        build_metric("clip_text", MetricSettings(options={"clip": {"pretrained": missing_file}}))
    with pytest.raises(models.WeightsUnavailable, match="alexnet-owt-.*IMAGENET1K_V1"):
        build_metric("lpips", strict)


def test_unknown_clip_architecture_is_an_error_even_with_random_allowed() -> None:
    with pytest.raises(ValueError, match="unknown CLIP model 'ViT-Q-99'"):
        models.load_clip(MetricSettings(allow_random=True, options={"clip": {"model": "ViT-Q-99"}}))


def test_a_cached_tag_download_is_found_without_network(tmp_path: Path) -> None:
    (tmp_path / "ViT-B-32.pt").write_bytes(b"")  # where open_clip's URL download of the openai tag would be
    checkpoint, tag_config = models._local_clip_checkpoint("ViT-B-32", "openai", str(tmp_path))
    assert checkpoint == str(tmp_path / "ViT-B-32.pt")
    assert tag_config["quick_gelu"] is True


def test_real_weights_load_from_a_local_file(tmp_path: Path, metrics: dict[str, Any]) -> None:
    """The real-weights path end to end, using the tiny model's own weights saved as a local checkpoint."""
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(metrics["clip_text"].clip.model.state_dict(), checkpoint)
    options = {"clip": {"model": models.TINY_CLIP_MODEL, "pretrained": str(checkpoint)}}
    settings = MetricSettings(allow_random=False, options=options)
    real = build_metric("clip_text", settings)
    assert real.weights == f"{models.TINY_CLIP_MODEL}/{checkpoint}"
    sample = Sample("g", "generate", output_image=image(0), prompt="a wooden chair")
    from_random = values(metrics["clip_text"].compute([sample])[0])
    assert values(real.compute([sample])[0]) == pytest.approx(from_random, abs=1e-6)


def test_alexnet_checkpoint_name_is_torchvisions() -> None:
    """The LPIPS weights check names the file without importing torchvision: the name must be torchvision's."""
    import os

    import torchvision

    assert models.ALEXNET_CHECKPOINT == os.path.basename(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url)


def test_clip_metrics_of_one_actor_share_one_model(
    random_settings: MetricSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clip_image and clip_text with the same settings score with one CLIP (one load, the same module); another
    configuration (here another cache folder) gets its own."""
    monkeypatch.setattr(models, "_SHARED_CLIP", {})
    before = models.LOAD_COUNT["clip"]
    image_metric, text_metric = build_metric("clip_image", random_settings), build_metric("clip_text", random_settings)
    assert models.LOAD_COUNT["clip"] - before == 1
    assert image_metric.clip.model is text_metric.clip.model
    other = MetricSettings(allow_random=True, options={"clip": {"cache_dir": "/nonexistent-clip-cache"}})
    assert build_metric("clip_image", other).clip.model is not image_metric.clip.model
    assert models.LOAD_COUNT["clip"] - before == 2
