"""A method and a metric are one file each: a toy method (tests/toy_method.py) and a toy metric
(tests/toy_metric.py), registered from the test folder, run through a suite like the shipped ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_inputs import make_pairs, make_suite

import clic.methods
import harness.metrics
from clic.methods import register_method
from harness import store
from harness.execute.runner import execute
from harness.metrics import register_metric


@pytest.fixture
def toy_plugins() -> Iterator[None]:
    register_method("toy_fill", "toy_method:MeanColourFill")
    register_metric("toy_changed_share", "toy_metric:ChangedShare")
    yield
    clic.methods.REGISTRY.pop("toy_fill")
    harness.metrics.PLUGINS.pop("toy_changed_share")


def test_a_toy_method_and_metric_registered_by_a_test_run_through_a_suite(
    toy_plugins, ray_session, tmp_path: Path
) -> None:
    suite = make_suite(
        {
            "name": "toys",
            "model": "tiny",
            "methods": [{"name": "toy_fill"}, {"name": "cut_paste"}],
            "seeds": [0],
            "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
            "metrics": ["toy_changed_share", "ssim_psnr"],
            "resources": {"num_cpus": 1},
        }
    )
    pairs = make_pairs(tmp_path / "data", 2)
    summary = execute(suite, pairs, tmp_path / "run", quiet=True)
    results = store.read_results(tmp_path / "run")
    assert summary.done == 4 and summary.failed == 0, results["error"].tolist()
    toy = results[results["metric"].eq("toy_changed_share")].set_index(["method", "pair_id"])["value"]
    # The toy fill paints the source box's colour over the whole target box, whose colour differs: every mask
    # pixel changes. Cut-and-paste pastes the same box, so it changes every mask pixel too.
    assert toy.loc["toy_fill"].tolist() == [1.0, 1.0] and toy.loc["cut_paste"].tolist() == [1.0, 1.0]
    first = results[results["method"].eq("toy_fill") & results["pair_id"].eq("p0_0")]["artifact_image"].iloc[0]
    edited = np.asarray(Image.open(tmp_path / "run" / first).convert("RGB"))
    assert tuple(edited[30, 30]) == (0, 80, 160)  # the first source's box colour, inside the target box
    # Identity decided at plan time: rows carry the label, the run folder records the plan and its pairs.
    assert set(results["label"]) == {"toy_fill/default", "cut_paste/default"}
    plan = store.read_run_record(tmp_path / "run")["plan"]
    assert [run["target"] for run in plan["methods"]] == [
        "toy_method:MeanColourFill",
        "clic.methods.cut_paste:CutPaste",
    ]
    assert sorted(row["pair_id"] for row in store.read_pairs(tmp_path / "run")) == ["p0_0", "p1_0"]
