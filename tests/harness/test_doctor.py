"""`clic-bench doctor SUITE`: every model and metric weight a suite needs, found where or missing and how to get it."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_doctor_says_where_each_weight_is_and_how_to_get_the_missing_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    alexnet = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    alexnet.parent.mkdir(parents=True)
    alexnet.write_bytes(b"weights")  # doctor reads where files are, not what is in them
    code = main(["doctor", str(ROOT / "benchmarks" / "smoke.yaml"), "--set", "model=tiny"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1  # something is missing
    assert out[0].startswith("found   model tiny: built from code")
    assert f"found   metric lpips: AlexNet (LPIPS trunk): {alexnet}" in out
    clip = [line for line in out if line.startswith("MISSING metric clip_image:")]
    assert clip and "open_clip.create_model_and_transforms('ViT-B-32', pretrained='openai')" in clip[0]
    assert "found   metric ssim_psnr: no weights (closed form)" in out
    assert out[-1].endswith("missing") and not out[-1].startswith("0 found")


def test_doctor_names_a_missing_model_with_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", str(ROOT / "benchmarks" / "one_pair.yaml"), "--set", "model=CompVis/stable-diffusion-v1-4"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert (
        out[0].startswith("MISSING model CompVis/stable-diffusion-v1-4: ")
        and "hf download CompVis/stable-diffusion-v1-4" in out[0]
    )
    assert out[-1] == "2 found, 1 missing"
