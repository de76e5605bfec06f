"""`clic learn|transfer|generate|match|models` end to end on real-world-shaped inputs (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clic.cli import main

REPO = Path(__file__).resolve().parents[2]
SOURCE_SIZE, TARGET_SIZE = 1024, 1080


def gradient_image(size: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[:, None, None]) / 2 + rng.normal(0, 20, (size, size, channels))
    return np.clip(base, 0, 255).astype(np.uint8)


def box_mask(size: int, top: float, left: float, bottom: float, right: float) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[int(top * size) : int(bottom * size), int(left * size) : int(right * size)] = 255
    return mask


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    paths = {
        "source": root / "source.png",
        "mask": root / "mask.png",
        "mask2": root / "mask2.png",
        "target": root / "target.jpg",
        "target_mask": root / "target_mask.png",
    }
    rgba = gradient_image(SOURCE_SIZE, 4, 0)
    rgba[..., 3] = 255
    rgba[: SOURCE_SIZE // 8, :, 3] = 0  # a transparent band: composited on white
    Image.fromarray(rgba, "RGBA").save(paths["source"])
    Image.fromarray(np.repeat(box_mask(SOURCE_SIZE, 0.3, 0.2, 0.8, 0.6)[..., None], 3, axis=2), "RGB").save(
        paths["mask"]
    )
    Image.fromarray(np.repeat(box_mask(SOURCE_SIZE, 0.05, 0.7, 0.25, 0.95)[..., None], 3, axis=2), "RGB").save(
        paths["mask2"]
    )
    Image.fromarray(gradient_image(TARGET_SIZE, 3, 1), "RGB").save(paths["target"], quality=90)
    Image.fromarray(box_mask(TARGET_SIZE, 0.25, 0.25, 0.75, 0.7), "L").save(paths["target_mask"])
    return paths


@pytest.fixture(scope="module")
def chain(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """learn → transfer → generate → match through the CLI, timed."""
    out = tmp_path_factory.mktemp("chain")
    dirs = {name: out / name for name in ("concept", "edit", "gen", "match")}
    commands = {
        "learn": [
            "learn",
            "--model",
            "tiny",
            "--image",
            str(inputs["source"]),
            "--mask",
            str(inputs["mask"]),
            "--object",
            "chair",
            "--steps",
            "20",
            "--seed",
            "0",
            "--out",
            str(dirs["concept"]),
        ],
        "transfer": [
            "transfer",
            "--concept",
            str(dirs["concept"]),
            "--image",
            str(inputs["target"]),
            "--mask",
            str(inputs["target_mask"]),
            "--object",
            "chair",
            "--t-start",
            "10",
            "--eta",
            "1.0",
            "--out",
            str(dirs["edit"]),
        ],
        "generate": [
            "generate",
            "--concept",
            str(dirs["concept"]),
            "--object",
            "table",
            "--out",
            str(dirs["gen"]),
            "--steps",
            "10",
            "--images",
            "2",
        ],
        "match": [
            "match",
            "--concept",
            str(dirs["concept"]),
            "--image",
            str(inputs["target"]),
            "--object",
            "chair",
            "--out",
            str(dirs["match"]),
            "--steps",
            "10",
        ],
    }
    timings = {}
    for name, argv in commands.items():
        started, cpu_started = time.perf_counter(), time.process_time()
        assert main(argv) == 0, name
        timings[name] = (time.perf_counter() - started, time.process_time() - cpu_started)
    # Wall and CPU seconds: on a shared machine the wall time mostly measures the other processes.
    print(
        "\nCLI chain timing (wall/cpu): "
        + ", ".join(f"{k} {w:.1f}/{c:.1f} s" for k, (w, c) in timings.items())
        + f", total {sum(w for w, _ in timings.values()):.1f}/{sum(c for _, c in timings.values()):.1f} s"
    )
    return dirs


def test_learn_writes_a_concept_folder(chain: dict[str, Path]) -> None:
    meta = json.loads((chain["concept"] / "concept.json").read_text())
    assert meta["model_id"] == "tiny" and meta["tokens"] == ["<v*>"] and meta["config"]["steps"] == 20
    assert (chain["concept"] / "learned_embeds-v.safetensors").exists()


def test_transfer_outputs_at_the_target_size(chain: dict[str, Path]) -> None:
    for name in ("edited.png", "attention.png"):
        assert Image.open(chain["edit"] / name).size == (TARGET_SIZE, TARGET_SIZE)
    result = json.loads((chain["edit"] / "result.json").read_text())
    assert result["overrides"] == {"t_start": 10, "eta": 1.0} and result["model"] == "tiny-random"


def test_generate_writes_images(chain: dict[str, Path]) -> None:
    assert sorted(p.name for p in chain["gen"].glob("*.png")) == ["image-0.png", "image-1.png"]


def test_match_writes_masks_at_the_target_size(chain: dict[str, Path]) -> None:
    mask = Image.open(chain["match"] / "mask.png")
    assert mask.size == (TARGET_SIZE, TARGET_SIZE) and mask.mode == "L"
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(chain["match"] / "soft.png").size == (TARGET_SIZE, TARGET_SIZE)


def test_learn_two_concepts_from_one_image(inputs: dict[str, Path], tmp_path: Path) -> None:
    argv = [
        "learn",
        "--model",
        "tiny",
        "--image",
        str(inputs["source"]),
        "--mask",
        str(inputs["mask"]),
        "--mask2",
        str(inputs["mask2"]),
        "--object",
        "necklace",
        "--steps",
        "2",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(argv) == 0
    assert json.loads((tmp_path / "concept.json").read_text())["tokens"] == ["<v1*>", "<v2*>"]


def test_save_tiny_writes_a_loadable_folder(inputs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["models", "save-tiny", str(tmp_path / "tiny")]) == 0
    assert (tmp_path / "tiny" / "model_index.json").exists()
    argv = [
        "learn",
        "--model",
        str(tmp_path / "tiny"),
        "--image",
        str(inputs["source"]),
        "--mask",
        str(inputs["mask"]),
        "--object",
        "chair",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "concept"),
        "--quiet",
    ]
    assert main(argv) == 0


# ------------------------------------------------------------------------------------------ errors


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("clic: error: ")
    return lines[0]


def learn_argv(inputs: dict[str, Path], out: Path, **changes: str) -> list[str]:
    options = {
        "--model": "tiny",
        "--image": str(inputs["source"]),
        "--mask": str(inputs["mask"]),
        "--object": "chair",
        "--steps": "1",
        "--out": str(out),
        **changes,
    }
    return ["learn", "--quiet", *[item for pair in options.items() for item in pair]]


def test_error_missing_file(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.png")
    line = run_error(learn_argv(inputs, tmp_path / "c", **{"--image": missing}), capsys)
    assert missing in line and "not found" in line


def test_error_unreadable_image(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    line = run_error(learn_argv(inputs, tmp_path / "c", **{"--image": str(text)}), capsys)
    assert str(text) in line and "not a readable image" in line


def test_error_empty_mask(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.png"
    Image.new("L", (SOURCE_SIZE, SOURCE_SIZE), 0).save(empty)
    line = run_error(learn_argv(inputs, tmp_path / "c", **{"--mask": str(empty)}), capsys)
    assert str(empty) in line and "empty" in line


def test_error_mask_of_another_aspect_ratio(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide = tmp_path / "wide.png"
    Image.new("L", (SOURCE_SIZE, SOURCE_SIZE // 2), 255).save(wide)
    line = run_error(learn_argv(inputs, tmp_path / "c", **{"--mask": str(wide)}), capsys)
    assert str(wide) in line and "aspect ratio" in line


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--preset", "fancy", "--preset: unknown preset 'fancy'"),
        ("--method", "magic", "--method: unknown method 'magic'"),
        ("--steps", "0", "--steps: must be positive"),
    ],
)
def test_error_bad_learn_option(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    assert expected in run_error(learn_argv(inputs, tmp_path / "c", **{option: value}), capsys)


def test_error_t_start_outside_the_schedule(
    chain: dict[str, Path], inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "transfer",
        "--concept",
        str(chain["concept"]),
        "--image",
        str(inputs["target"]),
        "--mask",
        str(inputs["target_mask"]),
        "--object",
        "chair",
        "--t-start",
        "60",
        "--steps",
        "50",
        "--out",
        str(tmp_path),
    ]
    assert "--t-start: must lie in [1, 49]" in run_error(argv, capsys)


def test_error_not_a_concept_folder(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--concept", str(tmp_path), "--object", "table", "--out", str(tmp_path / "g")]
    assert "not a concept folder" in run_error(argv, capsys)


def test_console_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    """Through a real process: exit code 2 and exactly one stderr line."""
    argv = [
        sys.executable,
        "-m",
        "clic.cli",
        "match",
        "--concept",
        str(tmp_path / "none"),
        "--image",
        "x.png",
        "--object",
        "chair",
        "--out",
        str(tmp_path / "m"),
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"clic: error: --concept: {tmp_path / 'none'}: not a concept folder (no concept.json)"
    ]


def test_an_object_storage_out_is_refused_in_one_line_not_written_to_a_local_s3_folder(tmp_path, monkeypatch, capsys):
    """issue 25: Path("s3://bucket/x") is a local folder "s3:". Only `clic-bench run` writes to object storage
    (harness.remote_folder); elsewhere such an --out is one line naming the scheme, and nothing is created;
    a run's --out whose scheme's package is missing is one line naming the package."""
    import importlib.util

    import pytest as _pytest

    from harness.errors import UsageError
    from harness.guards import check_output_folder

    monkeypatch.chdir(tmp_path)
    with _pytest.raises(
        UsageError, match=r"^--out: s3://bucket/runs/x: only `clic-bench run` writes to object storage \(s3://\)"
    ):
        check_output_folder("s3://bucket/runs/x")
    if importlib.util.find_spec("gcsfs") is None:
        with _pytest.raises(
            UsageError, match=r"^--out: gs://bucket/runs/x: gs:// needs the gcsfs package.*pip install gcsfs"
        ):
            check_output_folder("gs://bucket/runs/x", remote_ok=True)
    from harness.cli import main

    assert main(["report", str(tmp_path), "--out", "gs://bucket/report"]) == 2
    assert capsys.readouterr().err.count("clic-bench: error: --out: gs://bucket/report") == 1
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "gs:").exists()
