"""LPIPS on the world CLIP's trunk (``lpips.net: tiny-world``, harness.metrics.world_lpips): the distance against
Zhang et al. 2018 Eq. 1 with unit weights written out here, its label and recorded version, the tiny-world suite
default, and the missing-weights line. The scorer has random weights (seeded): the formula, not the training, is
under test."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.metrics import metric_class, models
from harness.metrics.base import TINY_RANDOM, MetricSettings, Sample, declaration

SIZE = 64
GRID = 8  # 64 px / 8 px patches (clic/world/configs/clic-world-clip.json)
# open_clip's OpenAI normalisation, which the world scorer keeps (its image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EPS = 1e-10  # lpips.normalize_tensor's
GREY = 0.5  # LpipsMasked's fill of the masked region for the outside score
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A random-weight scorer exported like `train-world --stage scorer` does, and its folder."""
    from clic.world.scorer import _save as save_scorer
    from clic.world.scorer import build_scorer

    folder = tmp_path_factory.mktemp("scorer")
    model = build_scorer(0).eval()
    save_scorer(model, folder)
    return model, folder


def _settings(folder: Path, **options: object) -> MetricSettings:
    return MetricSettings(options={"lpips": {"net": "tiny-world", "pretrained": str(folder), **options}})


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((SIZE, SIZE, 3), dtype=np.float32)


@torch.no_grad()
def _layer_maps(scorer: torch.nn.Module, first: np.ndarray, second: np.ndarray) -> list[torch.Tensor]:
    """Per transformer block l, the (GRID, GRID) map sum_c (y_hw^l - y0_hw^l)^2 of unit-normalised patch tokens.

    The ViT is run here block by block from its own modules (patch conv, class token, positions, ln_pre, blocks);
    the features are each residual block's output with the class token dropped."""
    visual = scorer.visual
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = torch.from_numpy(np.stack([first, second])).permute(0, 3, 1, 2)  # [0, 1]: lpips' [-1, 1] mapped back
    x = visual.conv1((pixels - mean) / std)  # (2, width, 8, 8)
    x = x.flatten(2).transpose(1, 2)  # (2, 64, width): patches in row-major order
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(2, 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    maps = []
    for block in visual.transformer.resblocks:
        x = block(x)
        tokens = x[:, 1:].reshape(2, GRID, GRID, -1)
        unit = tokens / (tokens.pow(2).sum(-1, keepdim=True).sqrt() + EPS)
        maps.append((unit[0] - unit[1]).pow(2).sum(-1))
    assert len(maps) == 4
    return maps


def _distance(scorer: torch.nn.Module, first: np.ndarray, second: np.ndarray) -> float:
    """Eq. 1, w_l = 1: the spatial mean of each layer's map, summed over layers."""
    return float(sum(layer.mean() for layer in _layer_maps(scorer, first, second)))


def _distance_map(scorer: torch.nn.Module, first: np.ndarray, second: np.ndarray) -> torch.Tensor:
    """lpips' spatial=True: each layer's map upsampled bilinearly to the image size, summed over layers."""
    return sum(
        F.interpolate(layer[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
        for layer in _layer_maps(scorer, first, second)
    )


def test_lpips_inside_and_outside_are_the_formula_on_the_world_trunk(exported) -> None:
    scorer, folder = exported
    target, output = _image(0), _image(1)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[8:40, 24:64] = True  # not symmetric: a transposed patch grid would score other pixels
    metric = metric_class("lpips")(_settings(folder))
    sample = Sample("job", "transfer", output_image=output, target_image=target, target_mask=mask)
    found = {value.name: value.value for value in metric.compute([sample])[0]}

    inside = _distance_map(scorer, output, target)[torch.from_numpy(mask)].mean()
    grey_output, grey_target = output.copy(), target.copy()
    grey_output[mask], grey_target[mask] = GREY, GREY
    outside = _distance_map(scorer, grey_output, grey_target)[torch.from_numpy(~mask)].mean()
    assert found == pytest.approx({"lpips_inside": float(inside), "lpips_outside": float(outside)}, rel=1e-4)
    assert 0 < found["lpips_outside"] < found["lpips_inside"]  # the greyed region is equal in both


def test_lpips_diversity_is_the_mean_pairwise_formula_on_the_world_trunk(exported) -> None:
    scorer, folder = exported
    pictures = [_image(seed) for seed in (3, 4, 5)]
    metric = metric_class("lpips_diversity")(_settings(folder))
    samples = [Sample(f"g{i}", "generate", output_image=p, group="pair/clic") for i, p in enumerate(pictures)]
    (value,) = metric.compute_group(samples)
    expected = np.mean([_distance(scorer, pictures[i], pictures[j]) for i, j in itertools.combinations(range(3), 2)])
    assert value.name == "lpips_diversity" and value.value == pytest.approx(expected, rel=1e-4)


def test_identical_images_are_at_distance_zero(exported) -> None:
    _, folder = exported
    picture = _image(7)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[16:48, 16:48] = True
    masked = metric_class("lpips")(_settings(folder))
    sample = Sample("job", "transfer", output_image=picture, target_image=picture.copy(), target_mask=mask)
    assert {value.name: value.value for value in masked.compute([sample])[0]} == {
        "lpips_inside": 0.0,
        "lpips_outside": 0.0,
    }
    diversity = metric_class("lpips_diversity")(_settings(folder))
    same = [Sample(f"g{i}", "generate", output_image=picture, group="g") for i in range(3)]
    assert [(value.name, value.value) for value in diversity.compute_group(same)] == [("lpips_diversity", 0.0)]


def test_world_lpips_is_labelled_and_versioned_apart_from_alexnet(exported) -> None:
    from clic.components import TINY_WORLD_LABEL

    _, folder = exported
    assert models.lpips_weights_found(_settings(folder)) == [f"LPIPS trunk tiny-world (the world scorer): {folder}"]
    for name in ("lpips", "lpips_diversity"):
        assert metric_class(name)(_settings(folder)).weights == TINY_WORLD_LABEL
        world = declaration(metric_class(name), {"lpips": {"net": "tiny-world"}}).version
        alex = declaration(metric_class(name), {"lpips": {"net": "alex"}}).version
        assert alex == declaration(metric_class(name)).version and "alex" in alex
        assert world != alex and "alex" not in world


def _suite(tmp_path: Path, name: str, changes: dict) -> Path:
    manifest = ROOT / "manifests" / "furniture" / "manifest.parquet"
    base = {"name": name, "manifest": str(manifest), "methods": [{"name": "cut_paste"}], "tasks": ["transfer"]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({**base, **changes}))
    return path


def test_a_tiny_world_suite_scores_lpips_on_the_world_trunk_unless_told(tmp_path: Path) -> None:
    from harness.plan.resolve import plan_from_suite
    from harness.plan.suite import load_suite

    both = ["lpips", "lpips_diversity", "clip_image"]
    cases = {
        "world": ({"model": "tiny-world", "metrics": both}, {"net": "tiny-world"}),
        "folder": (
            {"model": "tiny-world", "metrics": ["lpips"], "metric_options": {"lpips": {"pretrained": "/w"}}},
            {"pretrained": "/w", "net": "tiny-world"},
        ),
        "named": (
            {"model": "tiny-world", "metrics": ["lpips"], "metric_options": {"lpips": {"net": "alex"}}},
            {"net": "alex"},
        ),
        "tiny": ({"model": "tiny", "metrics": both}, None),
        "no lpips metric": ({"model": "tiny-world", "metrics": ["ssim_psnr"]}, None),
    }
    for name, (changes, expected) in cases.items():
        suite = load_suite(_suite(tmp_path, name.replace(" ", "-"), changes))
        options = suite.metric_options
        assert (dict(options["lpips"]) if "lpips" in options else None) == expected, name
        if "lpips" in suite.metrics:  # what the rows record as metric_version follows the net
            version = next(m.version for m in plan_from_suite(suite, 64).metrics if m.name == "lpips")
            assert ("alex" in version) == (expected in (None, {"net": "alex"})), name
    assert dict(load_suite(_suite(tmp_path, "w", cases["world"][0])).metric_options["clip"]) == {"model": "tiny-world"}


def test_missing_world_scorer_is_one_line_or_the_labelled_random_trunk(tmp_path: Path) -> None:
    from harness.plan.preflight import missing_metric_weights
    from harness.plan.suite import load_suite

    strict = _settings(tmp_path)  # an empty folder
    (line,) = models.missing_lpips_weights(strict)
    assert "train-world --stage scorer" in line and str(tmp_path) in line and "\n" not in line
    assert models.lpips_weights_found(strict) == []
    with pytest.raises(models.WeightsUnavailable, match="train-world --stage scorer"):
        metric_class("lpips")(strict)
    relaxed = MetricSettings(allow_random=True, options=strict.options)
    assert models.missing_lpips_weights(relaxed) == []
    assert metric_class("lpips_diversity")(relaxed).weights == TINY_RANDOM

    options = {"lpips": {"pretrained": str(tmp_path)}}
    suite = load_suite(_suite(tmp_path, "s", {"model": "tiny-world", "metrics": ["lpips"], "metric_options": options}))
    (line,) = missing_metric_weights(suite, allow_random_metrics=False)
    assert line.startswith("metric lpips: ") and "train-world --stage scorer" in line


def test_a_scorer_folder_with_alexnet_is_a_one_line_error(tmp_path: Path) -> None:
    settings = MetricSettings(allow_random=True, options={"lpips": {"net": "alex", "pretrained": str(tmp_path)}})
    assert models.missing_lpips_weights(settings) == [
        "lpips.pretrained applies to lpips.net tiny-world only (net is alex)"
    ]
    with pytest.raises(ValueError, match="lpips.pretrained applies"):
        models.load_lpips(settings, spatial=False)
