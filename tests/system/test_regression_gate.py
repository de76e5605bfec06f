"""A regression gate that bites (issue 29 stage 6): a deliberately broken l_att, run against the good one through
``benchmarks/regression-gate.yaml``, makes ``clic-bench compare`` exit 1; the good run against itself exits 0.

Weights: the tiny random model (the tiny-world UNet is not shipped yet). What the broken loss changes there is the
token's attention, read by ``attention_in_mask``: see the suite file for why the official-code preset is the one
on which l_att has a grip on random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from broken_losses import ATT_SIGN_FLIPPED, att_sign_flipped

from clic.losses import Objective, StepTensors

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "regression-gate.yaml"


def test_the_broken_term_is_minus_l_att_from_the_formula() -> None:
    """Eq. (1) written out: l_att = mean((A − M)²) over a map and a mask of one size; the broken term is its
    negative, loaded through the objective's ``fn`` as the suite names it."""
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 1, 4, 4, generator=generator)
    masks = (torch.rand(2, 1, 4, 4, generator=generator) > 0.5).float()
    expected = (
        -sum(
            float((attention[b, 0, i, j] - masks[b, 0, i, j]) ** 2)
            for b in range(2)
            for i in range(4)
            for j in range(4)
        )
        / 32
    )
    step = StepTensors(noise=torch.zeros(2, 4, 4, 4), mask=masks, attention=attention, attention_masks=masks)
    assert float(att_sign_flipped(step)) == pytest.approx(expected, rel=1e-6)
    objective = Objective({"att": {"fn": ATT_SIGN_FLIPPED, "needs": ["context", "attention"], "weight": 0.25}})
    total, values = objective(step)
    assert float(total) == pytest.approx(0.25 * expected, rel=1e-6) and values["att"] == pytest.approx(expected)


def test_attention_in_mask_is_the_maps_mass_share_inside_the_mask() -> None:
    from harness.metrics import metric_class
    from harness.metrics.base import MetricSettings, Sample

    attention = np.array([[0.0, 0.5, 1.0], [0.25, 0.0, 0.0], [0.0, 0.0, 0.25]], dtype=np.float32)
    mask = np.array([[False, True, True], [False, False, False], [False, False, True]])
    expected = (0.5 + 1.0 + 0.25) / (0.5 + 1.0 + 0.25 + 0.25)
    metric = metric_class("attention_in_mask")(MetricSettings())
    samples = [
        Sample(job_id="a", task="transfer", attention=attention, target_mask=mask),
        Sample(job_id="flat", task="transfer", attention=np.zeros((3, 3), np.float32), target_mask=mask),
        Sample(job_id="g", task="generate", attention=attention, target_mask=mask),
    ]
    scored = metric.compute(samples)
    assert [v.name for v in scored[0]] == ["attention_in_mask"] and scored[0][0].value == pytest.approx(expected)
    assert scored[1] == [] and scored[2] == []  # a flat map has no mass; generations have no target mask
    assert metric_class("attention_in_mask").values == {"attention_in_mask": True}


def test_the_transfer_attention_is_placed_on_the_target_like_the_edited_image() -> None:
    """A wide target is padded to a square for the model; the map comes back at the target's size, over the
    target only (the padding's share of the map is cut away, as from_model_output does for the image)."""
    from PIL import Image

    from clic.io import to_model_input
    from harness.execute.worker_files import map_at_original_size

    target = Image.new("RGB", (96, 48))
    _, _, placement = to_model_input(target, None, 64)
    square = np.zeros((64, 64), np.float32)
    box = [round(v) for v in placement.box_at(64)]  # (left, upper, right, lower) of the target in the square
    square[box[1] : box[3], box[0] : box[2]] = 1.0
    mapped = map_at_original_size(square, placement)
    assert mapped.shape == (48, 96)
    assert float(mapped[2:-2, 2:-2].min()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_compare_fails_the_broken_loss_and_passes_the_good_one(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    def run(out: Path, *extra: str) -> int:
        return main(["run", str(SUITE), "--out", str(out), "--quiet", "--no-report", *extra])

    good, broken = tmp_path / "good", tmp_path / "broken"
    assert run(good) == 0
    assert (
        run(
            broken,
            "--set",
            "methods[0].learn.terms.att={weight: 0.25, resize: bilinear, "
            f"fn: '{ATT_SIGN_FLIPPED}', needs: [context, attention]}}",
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(good), str(broken)]) == 1
    out = capsys.readouterr().out
    assert "Regression: 1 metric(s)" in out and "attention_in_mask (clic/official-code)" in out
    assert main(["compare", str(good), str(good)]) == 0
