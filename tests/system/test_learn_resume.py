"""Resume inside a learn: with ``checkpoint_every``, a learn interrupted between snapshots continues from its newest
snapshot (trained tensors, optimizer moments, every random state) and ends with exactly the weights of a learn that
was never interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import random_source

from clic.learn import RESUME_FILE, learn_concept
from clic.methods.base import get_method
from clic.models import build_tiny


class Interrupted(Exception):
    """Stands in for a killed worker: raised from inside the loop, after a step, between two snapshots."""


def _learn(out_dir: Path, overrides: dict, stop_at: int | None = None):
    method = get_method("clic")
    config = method.learn_config("official-code", {**overrides, "checkpoint_every": 2})

    def on_step(step: int, values: dict) -> None:
        if stop_at is not None and step == stop_at:
            raise Interrupted(f"stopped at step {step}")

    return learn_concept(
        build_tiny(),
        random_source(1),
        config,
        method="clic",
        preset="official-code",
        seed=7,
        step_fn=method.training_step,
        out_dir=out_dir,
        progress=False,
        on_step=on_step,
    )


def _assert_same_weights(a, b) -> None:
    assert a.vectors.keys() == b.vectors.keys() and a.attention_state.keys() == b.attention_state.keys()
    for name in a.vectors:
        assert torch.equal(a.vectors[name], b.vectors[name]), name
    for name in a.attention_state:
        assert torch.equal(a.attention_state[name], b.attention_state[name]), name
    assert [row["total"] for row in a.loss_log] == [row["total"] for row in b.loss_log]


TWO_PHASES = {
    "phases": [
        {"steps": 2, "token_lr": 5e-3, "attention_lr": 0.0},  # Break-A-Scene's shape:
        {"steps": 4, "token_lr": 1e-3, "attention_lr": 1e-3},
    ]
}  # tokens, then + attention


@pytest.mark.parametrize(
    "overrides, stop_at",
    [
        ({"steps": 7}, 4),  # official-code: AdamW on token + Q/K/V/out, random RoI prompts and augmentations
        ({"steps": 5, "gradient_accumulation": 2}, 4),
        (TWO_PHASES, 3),  # the snapshot at step 2 ends phase 1: phase 2 starts with a fresh optimizer, as uninterrupted
        (TWO_PHASES, 5),  # inside phase 2: its optimizer's moments come back
    ],
)
def test_an_interrupted_learn_resumes_to_the_same_final_weights(tmp_path: Path, overrides: dict, stop_at: int) -> None:
    straight = _learn(tmp_path / "straight", overrides)
    with pytest.raises(Interrupted):
        _learn(tmp_path / "resumed", overrides, stop_at=stop_at)  # inside a step between two snapshots
    snapshot = stop_at // 2 * 2
    assert sorted(p.parent.name for p in (tmp_path / "resumed").glob(f"checkpoints/*/{RESUME_FILE}")) == [
        f"step-{snapshot:05d}"
    ]
    resumed = _learn(tmp_path / "resumed", overrides)  # a new process would build fresh components: so do we
    assert resumed.extras["resumed_from_step"] == snapshot and "resumed_from_step" not in straight.extras
    _assert_same_weights(straight, resumed)


def test_a_snapshot_of_another_learn_is_not_resumed(tmp_path: Path) -> None:
    with pytest.raises(Interrupted):
        _learn(tmp_path / "c", {"steps": 6}, stop_at=3)
    other = _learn(tmp_path / "c", {"steps": 6, "lr": 1e-3})  # other settings, same folder: starts afresh
    assert "resumed_from_step" not in other.extras
    _assert_same_weights(other, _learn(tmp_path / "fresh", {"steps": 6, "lr": 1e-3}))


def test_an_uninterrupted_learn_is_not_changed_by_its_snapshots(tmp_path: Path) -> None:
    method = get_method("clic")
    plain = learn_concept(
        build_tiny(),
        random_source(1),
        method.learn_config("official-code", {"steps": 5}),
        method="clic",
        preset="official-code",
        seed=7,
        step_fn=method.training_step,
        progress=False,
    )
    _assert_same_weights(plain, _learn(tmp_path / "snap", {"steps": 5}))


# ------------------------------------------------------------------------------------------ in a run
@pytest.fixture
def killed_once_method():
    """The test method ``clic_killed_once`` (tests/fault_injection.py), registered for this test only."""
    from clic import methods

    methods.register_method("clic_killed_once", "fault_injection:ClicKilledOnce")
    yield
    methods.REGISTRY.pop("clic_killed_once", None)


@pytest.mark.slow  # a worker killed inside the real loop and its Ray retry: ~2 min on this machine
def test_a_worker_killed_between_snapshots_resumes_and_the_row_says_so(
    ray_session, killed_once_method, tmp_path: Path
) -> None:
    from run_inputs import make_pairs, make_suite
    from safetensors.torch import load_file

    from harness import store
    from harness.execute.runner import execute

    pairs = make_pairs(tmp_path / "data", 1)
    run = tmp_path / "run"
    suite = make_suite(
        {
            "name": "resume",
            "model": "tiny",
            "seeds": [0],
            "methods": [
                {
                    "name": "clic_killed_once",
                    "presets": ["kill-once", "straight"],
                    "learn": {"steps": 6, "checkpoint_every": 2},
                }
            ],
            "transfer": {"t_start": [2], "eta": [0.0], "steps": 3},
            "metrics": ["ssim_psnr"],
            "resources": {"num_cpus": 1, "max_retries": 2},
        }
    )
    summary = execute(suite, pairs, run, quiet=True)
    assert (summary.done, summary.failed) == (2, 0)
    assert len(list((run / store.CONCEPTS_DIR).glob(".fault-learn-kill-*"))) == 1  # the kill did happen, once
    results = store.read_results(run)
    notes = {
        preset: note if isinstance(note, str) else None for preset, note in zip(results["preset"], results["notes"])
    }
    assert notes == {"kill-once": "learn resumed from its step-2 snapshot", "straight": None}, notes
    # Killed at step 3 and resumed from step 2: the same weights as the learn that was never killed.
    folders = {
        preset: run / store.CONCEPTS_DIR / concept for preset, concept in zip(results["preset"], results["concept_id"])
    }
    for name in ("pytorch_custom_diffusion_weights.safetensors",):
        killed, straight = (load_file(str(folders[p] / name)) for p in ("kill-once", "straight"))
        assert killed.keys() == straight.keys() and all(torch.equal(killed[k], straight[k]) for k in killed)
    killed, straight = (
        load_file(str(next(folders[p].glob("learned_embeds-*.safetensors")))) for p in ("kill-once", "straight")
    )
    assert all(torch.equal(killed[k], straight[k]) for k in killed)
    assert not list((run / store.CONCEPTS_DIR).glob(".learning-*"))  # published
