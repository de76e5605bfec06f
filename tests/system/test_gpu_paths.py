"""GPU code paths checked for correctness on the CPU: mixed precision with fp32 master weights, gradient
checkpointing, fractional GPU requests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import last_json_line

from benchmarks.perf.steps import fused_loss, make_case, parameters
from clic.learn import ConceptSource
from clic.methods.base import get_method
from clic.models import build_tiny


def source() -> ConceptSource:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1
    return ConceptSource(torch.rand(3, 64, 64, generator=generator) * 2 - 1, mask, "chair")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_fp32_master_weights(precision):
    full = get_method("clic").learn(build_tiny(), source(), overrides={"steps": 2}, progress=False)
    mixed = get_method("clic").learn(
        build_tiny(), source(), overrides={"steps": 2, "mixed_precision": precision}, progress=False
    )
    assert all(v.dtype == torch.float32 for v in mixed.vectors.values())
    assert all(v.dtype == torch.float32 for v in mixed.attention_state.values())
    first_full, first_mixed = full.loss_log[0], mixed.loss_log[0]
    for term in ("con", "att", "roi"):  # same inputs: the low-precision forward is close, not equal
        assert first_mixed[term] == pytest.approx(first_full[term], rel=5e-2, abs=1e-3)


def test_low_precision_model_with_fp32_trained_copies():
    components = build_tiny()
    for module in (components.unet, components.text_encoder):
        module.to(torch.bfloat16)
    concept = get_method("clic").learn(
        components, source(), overrides={"steps": 2, "mixed_precision": "bf16"}, progress=False
    )
    assert all(torch.isfinite(torch.tensor(row["total"])) for row in concept.loss_log)
    assert all(v.dtype == torch.float32 for v in concept.attention_state.values())
    assert concept.vectors["<v*>"].dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    plain = make_case(64)
    loss, _ = fused_loss(plain)
    loss.backward()
    expected = [p.grad.clone() for p in parameters(plain)]
    checkpointed = make_case(64)
    checkpointed.state.components.unet.enable_gradient_checkpointing()
    checkpointed.state.components.unet.train()
    loss_ckpt, _ = fused_loss(checkpointed)
    loss_ckpt.backward()
    assert float(loss_ckpt) == pytest.approx(float(loss), rel=1e-6)
    for grad, p in zip(expected, parameters(checkpointed)):
        torch.testing.assert_close(p.grad, grad, rtol=1e-5, atol=1e-7)


def test_learning_with_gradient_checkpointing_runs():
    concept = get_method("clic").learn(
        build_tiny(), source(), overrides={"steps": 2, "gradient_checkpointing": True}, progress=False
    )
    assert len(concept.loss_log) == 2


def test_suite_accepts_fractional_gpus():
    from harness.plan.suite import suite_from_dict

    root = Path(__file__).resolve().parents[2]
    suite = suite_from_dict(
        {
            "name": "gpu",
            "manifests": [str(root / "manifests/furniture/manifest.parquet")],
            "methods": [{"name": "cut_paste"}],
            "resources": {"num_gpus": 0.25},
        },
        source="inline",
        base_dir=root,
    )
    assert suite.resources.num_gpus == 0.25


FRACTIONAL_SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile, time
    os.environ["RAY_AUTH_MODE"] = "disabled"
    sys.path.insert(0, {root!r})
    import ray
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False)  # one logical GPU
    barrier = tempfile.mkdtemp()

    @ray.remote(num_gpus=0.25, num_cpus=1)
    def job(i):
        # A rendezvous instead of a timing window: each job waits until all four are running. Were the four not
        # packed onto the one GPU at once, the first would wait alone and time out (worker start-up under load
        # no longer matters).
        open(os.path.join(barrier, str(i)), "w").close()
        deadline = time.time() + 120
        while len(os.listdir(barrier)) < 4 and time.time() < deadline:
            time.sleep(0.05)
        return len(os.listdir(barrier)) == 4, ray.get_gpu_ids()

    results = ray.get([job.remote(i) for i in range(4)])
    print(json.dumps({{"all_together": all(ok for ok, _ in results), "gpu_ids": [ids for _, ids in results]}}))
    ray.shutdown()
""")


@pytest.mark.slow
def test_fractional_gpu_requests_pack_onto_one_gpu(tmp_path):
    """Four jobs asking 0.25 GPU each run at the same time on one (logical) GPU."""
    root = str(Path(__file__).resolve().parents[2])
    result = subprocess.run(
        [sys.executable, "-c", FRACTIONAL_SCRIPT.format(root=root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = last_json_line(result.stdout)
    assert report["all_together"]  # all four were running at the same time
    assert all(ids == report["gpu_ids"][0] for ids in report["gpu_ids"])
