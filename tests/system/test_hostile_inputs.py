"""Hostile but realistic inputs to every entry point: one line each, no hang, no blow-up, no stale numbers.

The corpus is built here from small generators (no binary files in git): every case of an entry point runs
through its real `main` and must end with exit code 2 and exactly one line on stderr naming the option, file,
row or key. Where a command handles good and bad rows together (run, manifest preview), the good rows'
results are checked too. Then: a manifest edit reruns the affected jobs, large masks stay within memory, remote
and YAML traps end in seconds, and two runs on one folder leave one row per (job, metric).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from test_manifest import DataSet, picture, save

from clic.cli import main as clic_main
from harness import store
from harness.analyse.study import BROKEN
from harness.cli import main as bench_main
from harness.execute import run_folder

REPO = Path(__file__).resolve().parents[2]
ALIAS_BOMB = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images, a learned tiny concept, broken copies of it, a run folder with results, a pack and its key."""
    root = tmp_path_factory.mktemp("corpus")
    paths = {"root": root, "image": root / "image.png", "mask": root / "mask.png", "file": root / "a-file.txt"}
    Image.fromarray(picture(64, 64)).save(paths["image"])
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(paths["mask"])
    paths["file"].write_text("not a folder")
    concept = root / "concept"
    assert (
        clic_main(
            [
                "learn",
                "--model",
                "tiny",
                "--image",
                str(paths["image"]),
                "--mask",
                str(paths["mask"]),
                "--object",
                "chair",
                "--steps",
                "1",
                "--out",
                str(concept),
                "--quiet",
            ]
        )
        == 0
    )
    paths["concept"] = concept
    meta = json.loads((concept / "concept.json").read_text())
    token_file = next(iter(meta["token_files"].values()))
    for name, damage in {
        "truncated": lambda folder: _truncate(folder / "pytorch_custom_diffusion_weights.safetensors"),
        "empty-embedding": lambda folder: _empty_embedding(folder / token_file),
        "broken-json": lambda folder: (folder / "concept.json").write_text('{"method": "clic", '),
    }.items():
        broken = root / f"concept-{name}"
        subprocess.run(["cp", "-r", str(concept), str(broken)], check=True)
        damage(broken)
        paths[f"concept-{name}"] = broken
    paths["token_file"] = Path(token_file)

    from test_study import make_fake_run

    from harness.analyse.study import build_pack

    run_dir = make_fake_run(root / "fake", {"furniture": 3})
    _, key = build_pack(run_dir, root / "pack", n_pairs=2, n_raters=1, seed=0)
    paths["run"], paths["key"] = run_dir, key
    return paths


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty_embedding(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    name = next(iter(load_file(str(path))))
    save_file({name: torch.zeros(0)}, str(path))


def _answers(corpus: dict[str, Path], change: Callable[[dict], None]) -> Path:
    key = json.loads(corpus["key"].read_text())
    rater = key["raters"][0]
    answers = [
        {"question": q, "criterion": c, "ranking": sorted(spec["options"], key=lambda t: spec["options"][t] == BROKEN)}
        for q, spec in key["questions"].items()
        for c in key["criteria"]
    ]  # the broken image last: checks pass
    data = {"pack_id": key["pack_id"], "rater": rater, "answers": answers}
    change(data)
    path = corpus["root"] / f"answers-{abs(hash(json.dumps(data, sort_keys=True)))}.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------- clic
LONG_OBJECT = " ".join(["armchair"] * 200)


def _clic(corpus: dict[str, Path], command: str, *extra: str, concept: str = "concept") -> list[str]:
    image, mask, out = str(corpus["image"]), str(corpus["mask"]), str(corpus["root"] / "out")
    if command == "learn":
        base = ["learn", "--model", "tiny", "--image", image, "--mask", mask, "--steps", "1", "--quiet"]
    elif command == "transfer":
        base = [
            "transfer",
            "--concept",
            str(corpus[concept]),
            "--image",
            image,
            "--mask",
            mask,
            "--steps",
            "4",
            "--t-start",
            "2",
        ]
    else:
        base = ["match", "--concept", str(corpus[concept]), "--image", image, "--steps", "1"]
    defaults = {"--object": "chair", "--out": out}
    for option, value in defaults.items():
        if option not in extra:
            base += [option, value]
    return base + list(extra)


CLIC_CASES = {
    "learn --seed 2**64": (("learn", "--seed", str(2**64)), "--seed: must be at most 4294967295"),
    "learn --seed -1": (("learn", "--seed", "-1"), "--seed: must be at least 0"),
    "learn --object ''": (("learn", "--object", ""), "--object: must not be empty or blank"),
    "learn --object blank": (("learn", "--object", "   "), "--object: must not be empty or blank"),
    "learn --object 200 words": (("learn", "--object", LONG_OBJECT), "--object: 200 tokens, at most 53 fit"),
    "learn --out a file": (("learn", "--out", "FILE"), "is an existing file, not a folder"),
    "learn --out under a file": (("learn", "--out", "FILE/sub"), "cannot be created"),
    "transfer --eta inf": (("transfer", "--eta", "inf"), "--eta: must be a finite number, got inf"),
    "transfer --eta nan": (("transfer", "--eta", "nan"), "--eta: must be a finite number, got nan"),
    "transfer --eta -1": (("transfer", "--eta", "-1"), "--eta: must be at least 0.0"),
    "transfer --object 200 words": (("transfer", "--object", LONG_OBJECT), "--object: 200 tokens"),
    "transfer truncated safetensors": (
        ("transfer", "@concept-truncated"),
        "pytorch_custom_diffusion_weights.safetensors: unreadable weights",
    ),
    "transfer empty embedding": (("transfer", "@concept-empty-embedding"), "is empty"),
    "transfer broken concept.json": (("transfer", "@concept-broken-json"), "concept.json: not readable JSON"),
    "match --threshold nan": (("match", "--threshold", "nan"), "--threshold"),
}


@pytest.mark.parametrize("case", list(CLIC_CASES), ids=list(CLIC_CASES))
def test_clic_corpus(corpus: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str) -> None:
    (command, *extra), words = CLIC_CASES[case]
    concept = "concept"
    if extra and extra[0].startswith("@"):
        concept = extra.pop(0)[1:]
    extra = [str(corpus["file"]) + value[4:] if value.startswith("FILE") else value for value in extra]
    capsys.readouterr()
    assert clic_main(_clic(corpus, command, *extra, concept=concept)) == 2
    line = one_error_line(capsys)
    assert line.startswith("clic: error: ") and words in line, line
    if "empty embedding" in case:
        assert str(corpus["token_file"]) in line


def test_clic_good_input_still_runs(corpus: dict[str, Path]) -> None:
    """The same command lines with good values work (the corpus does not refuse everything)."""
    out = corpus["root"] / "good-transfer"
    assert clic_main(_clic(corpus, "transfer", "--eta", "0.5", "--out", str(out))) == 0
    assert (out / "edited.png").is_file()


# -------------------------------------------------------------------------------------- clic-bench
def _suite(root: Path, manifest: Path, name: str, **changes: Any) -> Path:
    suite = {
        "name": "hostile",
        "model": "tiny",
        "manifest": str(manifest),
        "methods": [{"name": "cut_paste"}],
        "seeds": [0],
        "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
        "metrics": ["ssim_psnr"],
        "resources": {"num_cpus": 1, "max_retries": 1},
    }
    suite.update(changes)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))  # YAML writes non-finite numbers as .inf / .nan
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    dataset = DataSet(root / "set")
    manifest = dataset.write([dataset.row("p0"), dataset.row("p1")])
    truncated = root / "truncated.parquet"
    truncated.write_bytes(manifest.read_bytes()[:200])
    (root / "a-file").write_text("x")
    bomb = root / "bomb.yaml"
    bomb.write_text(
        f"manifest: {manifest}\nmethods: [{{name: cut_paste}}]\n{ALIAS_BOMB}\nmetric_options: {{ssim: {{x: *a8}}}}\n"
    )
    return {"root": root, "manifest": manifest, "truncated": truncated, "file": root / "a-file", "bomb": bomb}


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


BENCH_CASES: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str]] = {
    "run eta .inf": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "inf", transfer={"eta": [float("inf")]}))],
        "transfer.eta[0]: must be a finite number, got inf",
    ),
    "run eta .nan": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "nan", transfer={"eta": [float("nan")]}))],
        "transfer.eta[0]: must be a finite number, got nan",
    ),
    "run guidance nan": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "gnan", transfer={"guidance_scale": float("nan")}))],
        "transfer.guidance_scale: must be a finite number",
    ),
    "run seed 2**64": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "seed", seeds=[2**64]))],
        "seeds[0]: 18446744073709551616 is outside [0, 4294967295]",
    ),
    "run metric option inf": (
        lambda b: [
            "run",
            str(_suite(b["root"], b["manifest"], "opt", metric_options={"ssim_psnr": {"x": [float("inf")]}})),
        ],
        "metric_options.ssim_psnr.x[0]: must be a finite number",
    ),
    "run alias bomb": (lambda b: ["run", str(b["bomb"])], "YAML aliases expand to more than 100,000 values"),
    "run --max-in-flight -1": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "ok")), "--max-in-flight", "-1"],
        "--max-in-flight: must be at least 1, got -1",
    ),
    "run --num-cpus 0": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "ok")), "--num-cpus", "0"],
        "--num-cpus: must be at least 1, got 0",
    ),
    "run --address closed port": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "ok")), "--address", f"127.0.0.1:{_closed_port()}"],
        "no Ray cluster answers at 127.0.0.1",
    ),
    "run --out a file": (
        lambda b: ["run", str(_suite(b["root"], b["manifest"], "ok")), "--out", str(b["file"])],
        "--out: " + "{file} is an existing file, not a folder",
    ),
    "run manifest truncated": (
        lambda b: ["run", str(_suite(b["root"], b["truncated"], "trunc")), "--no-report"],
        "the manifest cannot be used",
    ),
    "report missing folder": (lambda b: ["report", str(b["root"] / "no-such-run")], "no-such-run: no such run folder"),
    "report --out a file": (lambda b: ["report", str(b["run"]), "--out", str(b["file"])], "is an existing file"),
    "pack --out a file": (lambda b: ["pack", str(b["run"]), "--out", str(b["file"])], "is an existing file"),
    "pack --seed 2**64": (
        lambda b: ["pack", str(b["run"]), "--out", str(b["root"] / "p"), "--seed", str(2**64)],
        "--seed: must be at most 4294967295",
    ),
    "pack missing folder": (
        lambda b: ["pack", str(b["root"] / "nope"), "--out", str(b["root"] / "p")],
        "nope: no such run folder",
    ),
    "compare --max-drop nan": (
        lambda b: ["compare", str(b["run"]), str(b["run"]), "--max-drop", "nan"],
        "--max-drop: must be a finite number, got nan",
    ),
    "compare --alpha 2": (
        lambda b: ["compare", str(b["run"]), str(b["run"]), "--alpha", "2"],
        "--alpha: must lie strictly between 0.0 and 1.0",
    ),
    "score rater is a list": (
        lambda b: ["score", str(b["key"]), str(_answers(b["corpus"], lambda d: d.update(rater=["r1"])))],
        "answer 1: rater must be a non-empty string, got a list",
    ),
    "score rater is blank": (
        lambda b: ["score", str(b["key"]), str(_answers(b["corpus"], lambda d: d.update(rater=" ")))],
        "rater must be a non-empty string, got ' '",
    ),
    "score question is a dict": (
        lambda b: [
            "score",
            str(b["key"]),
            str(_answers(b["corpus"], lambda d: d["answers"][0].update(question={"q": 1}))),
        ],
        "question must be a non-empty string, got a dict",
    ),
    "score option is a list": (
        lambda b: [
            "score",
            str(b["key"]),
            str(
                _answers(
                    b["corpus"], lambda d: d["answers"][0].update(ranking=[["x"]] + d["answers"][0]["ranking"][1:])
                )
            ),
        ],
        "option must be a non-empty string, got a list",
    ),
    "score --out a file": (
        lambda b: ["score", str(b["key"]), str(_answers(b["corpus"], lambda d: None)), "--out", str(b["file"])],
        "is an existing file",
    ),
    "manifest preview truncated": (
        lambda b: ["manifest", "preview", str(b["truncated"])],
        "not a readable Parquet file",
    ),
}


@pytest.mark.parametrize("case", list(BENCH_CASES), ids=list(BENCH_CASES))
def test_clic_bench_corpus(
    bench: dict[str, Path], corpus: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str
) -> None:
    build, words = BENCH_CASES[case]
    argv = build({**bench, "corpus": corpus, "run": corpus["run"], "key": corpus["key"]})
    capsys.readouterr()
    assert bench_main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    if case == "run manifest truncated":  # the row-level report line, then the refusal: the documented pair
        assert len(err) == 2 and "not a readable Parquet file" in err[0], err
        err = err[1:]
    assert len(err) == 1, err
    assert err[0].startswith("clic-bench: error: ") and words.format(file=bench["file"]) in err[0], err


ROW_CASES = {
    1: ("source_image", "leads outside the manifest's folder through a symlink"),
    2: ("source_image", "gs:// needs the gcsfs package, which is not installed (pip install gcsfs)"),
    3: ("target_image", "cannot reach host 127.0.0.1"),
}


def _row_corpus(tmp_path: Path) -> tuple[DataSet, Path]:
    """A good row, then the rows of ROW_CASES: a symlink out of the folder, gs:// without gcsfs, a closed port."""
    dataset = DataSet(tmp_path / "set")
    outside = tmp_path / "outside.png"
    save(picture(64, 48, seed=5), outside)
    (dataset.root / "img" / "link.png").symlink_to(outside)
    rows = [
        dataset.row("good"),
        dataset.row("link", source_image="img/link.png"),
        dataset.row("gs", source_image="gs://bucket/source.png"),
        dataset.row("http", target_image=f"http://127.0.0.1:{_closed_port()}/target.png"),
    ]
    return dataset, dataset.write(rows)


def _assert_row_lines(lines: list[str]) -> None:
    for row, (column, words) in ROW_CASES.items():
        mine = [line for line in lines if f" row {row} " in line]
        assert len(mine) == 1 and f"column {column!r}" in mine[0] and words in mine[0], (row, lines)


def test_run_corpus_rows_are_one_line_each_and_the_good_row_runs(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, manifest = _row_corpus(tmp_path)
    assert _run(_suite(tmp_path, manifest, "rows"), tmp_path / "run") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped: ")]
    assert len(err) == len(ROW_CASES)
    _assert_row_lines(err)
    results = store.read_results(tmp_path / "run")
    assert set(results["pair_id"]) == {"good"} and (results["status"] == "ok").all()


def test_validate_corpus_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` (and `run`, same loader): a symlink out of the folder, gs:// without gcsfs, an unreachable http
    host, an unknown column; each is one line naming row and column (or the manifest), good rows count."""
    dataset, manifest = _row_corpus(tmp_path)
    assert bench_main(["validate", str(manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    _assert_row_lines(out)
    assert out[-1] == "4 rows: 1 good, 3 bad"
    assert bench_main(["validate", str(manifest), "--allow-outside"]) == 1
    assert not any("symlink" in line for line in capsys.readouterr().out.splitlines())

    unknown = _with_unknown_column(dataset)
    assert bench_main(["validate", str(unknown)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert "column 'colour': unknown column" in out[0]
    assert out[-1] == "1 rows: 1 good, 0 bad; the manifest as a whole is refused (1 problem(s) above), so no row runs"


def _with_unknown_column(dataset: DataSet) -> Path:
    import pyarrow as pa

    path = dataset.write([dataset.row("good")], name="unknown.parquet")
    table = pq.read_table(path)
    pq.write_table(table.append_column("colour", pa.array(["red"])), path)
    return path


def test_preview_skips_bad_rows_and_draws_good_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = DataSet(tmp_path / "set")
    manifest = dataset.write([dataset.row("good"), dataset.row("bad", source_image="img/missing.png")])
    out = tmp_path / "sheet.png"
    assert bench_main(["manifest", "preview", str(manifest), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and "row 1 (pair_id 'bad') column 'source_image': file not found" in err[0], err
    assert out.is_file() and "(1 pairs, 1 bad rows left out)" in captured.out


def test_score_escapes_rater_ids_in_markdown(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = json.loads(corpus["key"].read_text())
    answers = _answers(corpus, lambda d: d.update(rater="<b>x</b>*_[y](z)"))
    hostile_key = {**key, "raters": ["<b>x</b>*_[y](z)"]}
    key_path = tmp_path / "key.json"
    key_path.write_text(json.dumps(hostile_key))
    assert bench_main(["score", str(key_path), str(answers), "--out", str(tmp_path / "scores")]) == 0
    markdown = (tmp_path / "scores" / "study.md").read_text()
    assert "\\<b\\>x\\</b\\>\\*\\_\\[y\\]\\(z\\)" in markdown and "<b>" not in markdown


# ------------------------------------------------------------------------------------------- YAML, remote
def test_alias_bomb_is_refused_before_it_grows() -> None:
    """The suite reader refuses ~43 million values expanded from nine lines, before anything walks them (counted,
    not timed: no wall-clock asserts in tests)."""
    import yaml

    from harness.plan.yaml_budget import BudgetedLoader, YamlBudgetError

    with pytest.raises(YamlBudgetError, match="more than 100,000 values"):
        yaml.load(ALIAS_BOMB, Loader=BudgetedLoader)
    small = yaml.load("a: &a [1, 2]\nb: [*a, *a]\n", Loader=BudgetedLoader)  # ordinary aliases still work
    assert small == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_gs_without_gcsfs_is_one_line_without_the_network(no_network: None) -> None:
    from harness.plan.remote import RemoteError, read_remote

    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    with pytest.raises(
        RemoteError, match=r"gs:// needs the gcsfs package, which is not installed \(pip install gcsfs\)"
    ):
        read_remote("gs://bucket/manifest.parquet")


# ------------------------------------------------------------------------------------------- large masks
def write_box_mask_16bit(path: Path, side: int) -> None:
    """A side x side 16-bit grayscale PNG with a white square, streamed row by row (a few MB on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    zero_row = b"\x00" + bytes(2 * side)
    box_row = b"\x00" + bytes(2 * (side // 4)) + b"\xff\xff" * (side // 4) + bytes(2 * (side - side // 2))
    compressor = zlib.compressobj(1)
    body = [compressor.compress(box_row if side // 4 <= y < side // 2 else zero_row) for y in range(side)]
    body.append(compressor.flush())
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
        + chunk(b"IDAT", b"".join(body))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_masks_threshold_the_same_by_strips(tmp_path: Path) -> None:
    """The strip-wise threshold equals the whole-image rule (value >= 32768) on a mask taller than a strip."""
    from clic.io import load_mask

    values = np.random.default_rng(0).integers(0, 65536, size=(2500, 40), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png"), values >= 32768)


@pytest.mark.slow
def test_validate_six_large_masks_stays_under_1_5_gb(tmp_path: Path) -> None:
    """Six 13000x13000 16-bit masks (each under PIL's bomb limit): `validate` finishes with a peak RSS, measured
    from the child process's rusage, under 1.5 GB (before: 9.2 GB, int64 copies decoded many at a time)."""
    dataset = DataSet(tmp_path / "set")
    save(np.full((100, 100, 3), 128, np.uint8), dataset.root / "img" / "square.png")
    for index in range(6):
        write_box_mask_16bit(dataset.root / "masks" / f"big-{index}.png", 13000)
    manifest = dataset.write(
        [
            dataset.row(
                f"p{i}",
                source_image="img/square.png",
                target_image="img/square.png",
                source_mask=f"masks/big-{2 * i}.png",
                target_mask=f"masks/big-{2 * i + 1}.png",
            )
            for i in range(3)
        ]
    )
    # The child's own peak is VmHWM of its process image: rusage's ru_maxrss would also count the pages of this
    # (large, after many tests) pytest process that the child shared between fork and exec.
    peak_file = tmp_path / "vmhwm-kb"
    script = (
        "import sys; from harness.cli import main; code = main(['validate', sys.argv[1]]); "
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1]; "
        "open(sys.argv[2], 'w').write(hwm); sys.exit(code)"
    )
    process = subprocess.run(
        [sys.executable, "-c", script, str(manifest), str(peak_file)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out, err = process.stdout, process.stderr
    peak_mb = int(peak_file.read_text()) / 1024
    print(f"\nvalidate, six 13000x13000 16-bit masks: peak RSS {peak_mb:.0f} MB")
    assert process.returncode == 0, (out, err)
    assert out.strip().splitlines()[-1] == "3 rows: 3 good, 0 bad"
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "large image" in err  # the one note
    assert peak_mb < 1536


# ------------------------------------------------------------------------------------------- runs
def _run(suite: Path, run: Path, *extra: str) -> int:
    return bench_main(["run", str(suite), "--out", str(run), "--quiet", "--no-report", *extra])


def test_manifest_edit_reruns_the_affected_jobs_with_the_new_values(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = DataSet(tmp_path / "set")
    rows = [dataset.row(f"p{i}") for i in range(3)]
    suite = _suite(tmp_path, dataset.write(rows), "edit")
    run = tmp_path / "run"
    assert _run(suite, run) == 0
    first = store.read_results(run)
    rows[1]["target_object"], rows[2]["category"] = "sofa", "jewelry"
    dataset.write(rows)
    capsys.readouterr()
    assert _run(suite, run) == 0
    captured = capsys.readouterr()
    assert "3 jobs: 2 done, 0 failed, 1 skipped" in captured.out
    assert "pair 'p1' changed in the manifest" in captured.err and "pair 'p2' changed" in captured.err
    results = store.read_results(run)
    assert results.groupby(["job_id", "metric"]).size().eq(1).all() and results["pair_id"].nunique() == 3
    value = lambda frame, pair, column: set(frame[frame["pair_id"] == pair][column])  # noqa: E731
    assert value(results, "p1", "object_word") == {"sofa"} and value(results, "p2", "category") == {"jewelry"}
    assert value(results, "p0", "job_id") == value(first, "p0", "job_id")  # untouched row: not rerun
    assert value(results, "p1", "job_id") != value(first, "p1", "job_id")


@pytest.mark.slow  # two `clic-bench run` processes, each starting its own Ray cluster
def test_two_runs_on_one_folder_take_turns(tmp_path: Path) -> None:
    """Two `clic-bench run` on one folder at once: one does the work, the other waits for it (one line) and then
    finds every job done; one row per (job, metric) and run.json lists both runs. With --no-wait a run refuses
    in one line naming the holder. The test holds the lock first, so both runs are certainly concurrent."""
    dataset = DataSet(tmp_path / "set")
    suite = _suite(tmp_path, dataset.write([dataset.row(f"p{i}") for i in range(3)]), "turns")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        str(suite),
        "--out",
        str(run),
        "--no-report",
        "--quiet",
        "--num-cpus",
        "1",
    ]
    logs = [(tmp_path / f"out-{i}.txt", tmp_path / f"err-{i}.txt") for i in range(2)]
    with run_folder.locked(run, "test-holder", quiet=True):
        refused = subprocess.run(command + ["--no-wait"], env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"in use by run test-holder (pid {os.getpid()} on " in refused.stderr
        runs = [subprocess.Popen(command, env=env, stdout=out.open("w"), stderr=err.open("w")) for out, err in logs]
        deadline = time.monotonic() + 120
        while not all("waiting for it to finish" in err.read_text() for _, err in logs):
            assert time.monotonic() < deadline and all(r.poll() is None for r in runs), [e.read_text() for _, e in logs]
            time.sleep(0.2)
    assert [r.wait(timeout=600) for r in runs] == [0, 0], [e.read_text() for _, e in logs]
    outs = sorted(out.read_text() for out, _ in logs)
    assert "3 jobs: 0 done, 0 failed, 3 skipped" in outs[0] and "3 jobs: 3 done" in outs[1], outs
    results = store.read_results(run)
    assert results["job_id"].nunique() == 3 and results.groupby(["job_id", "metric"]).size().eq(1).all()
    history = json.loads((run / store.RUN_RECORD).read_text())["runs"]
    assert sorted(r["counts"]["done"] for r in history) == [0, 3] and len({r["run_id"] for r in history}) == 2


def test_infrastructure_errors_and_damage_are_redone_next_run(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk is the machine's failure: the next run (no --retry-failed) runs the job again. A deleted
    artifact, an unreadable result file and a truncated concept are each found, said in one line and redone."""
    dataset = DataSet(tmp_path / "set")
    manifest = dataset.write([dataset.row("p0"), dataset.row("p1", source_image="img/target.jpg")])
    suite = _suite(tmp_path, manifest, "disk", methods=[{"name": "fault_injection", "presets": ["disk-full-once"]}])
    run = tmp_path / "run"
    assert _run(suite, run) == 1
    out = capsys.readouterr().out
    assert "2 job(s) failed for the machine's sake" in out
    errors = store.read_results(run)["error"].tolist()
    assert all(e.startswith(run_folder.INFRASTRUCTURE_PREFIX) and "No space left on device" in e for e in errors)
    assert _run(suite, run) == 0  # without --retry-failed
    assert "2 jobs: 2 done, 0 failed, 0 skipped" in capsys.readouterr().out

    results = store.read_results(run)
    p0, p1 = (results[results["pair_id"] == p].iloc[0] for p in ("p0", "p1"))
    (run / p0["artifact_image"]).unlink()
    (store.results_dir(run) / f"{p1['job_id']}.parquet").write_bytes(b"PAR1 truncated")
    concept = store.concept_dir(run, p0["concept_id"])
    weights = next(concept.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:20])
    assert _run(suite, run) == 0
    captured = capsys.readouterr()
    assert "2 jobs: 2 done, 0 failed, 0 skipped" in captured.out
    assert f"artifact of job {p0['job_id']} is missing" in captured.err
    assert f"{p1['job_id']}.parquet: unreadable result file" in captured.err
    assert "the concept was broken and has been learned again" in captured.err and weights.name in captured.err
    again = store.read_results(run)
    assert again["job_id"].nunique() == 2 and again.groupby(["job_id", "metric"]).size().eq(1).all()
    assert (again["status"] == "ok").all() and (run / p0["artifact_image"]).is_file()


def test_infrastructure_errors_are_told_apart_from_job_errors() -> None:
    import errno

    assert run_folder.is_infrastructure_error(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = RuntimeError("task failed")
    wrapped.cause = OSError(errno.EDQUOT, "Disk quota exceeded")  # as RayTaskError carries its cause
    assert run_folder.is_infrastructure_error(wrapped)
    assert not run_folder.is_infrastructure_error(FloatingPointError("loss is nan at step 1"))
    assert not run_folder.is_infrastructure_error(FileNotFoundError(errno.ENOENT, "no such file"))


def test_report_names_the_result_files_it_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_study import make_fake_run

    run_dir = make_fake_run(tmp_path, {"furniture": 2})
    (store.results_dir(run_dir) / "broken-job.parquet").write_bytes(b"PAR1 not really")
    assert bench_main(["report", str(run_dir)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("report: left out broken-job.parquet (unreadable: "), err
    assert "## Left out\n\n- broken-job.parquet (unreadable: " in (run_dir / "report" / "summary.md").read_text()
    assert "Left out of this report: broken-job.parquet" in (run_dir / "report" / "index.html").read_text()


# ------------------------------------------------------------------------------ round three (issue 27)
# Each test below is one reproduction of issue 27, numbered as there. Commands that would take the machine down on a
# broken build (memory) or hang (GPU wait) run in a child process with a memory limit or a timeout.
def _child(
    argv: list[str],
    module: str = "clic.cli",
    *,
    timeout: float = 180,
    memory_gb: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    def limit() -> None:
        if memory_gb is not None:
            import resource

            size = int(memory_gb * 1024**3)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", **(env or {})},
    )


def _stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_27_01_huge_resolution_is_refused_before_any_work(corpus: dict[str, Path]) -> None:
    """1. `clic learn --resolution 100000` grew to 23 GB until the OOM killer ended it; now one line at once."""
    argv = _clic(corpus, "learn", "--resolution", "100000")
    done = _child(argv, memory_gb=6)  # a broken build dies of MemoryError here, not of the OOM killer
    lines = _stderr_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("clic: error: --resolution: 100000") and "memory" in lines[0], lines


def test_27_01_huge_resolution_is_refused_by_the_suite_reader(bench: dict[str, Path], tmp_path: Path) -> None:
    from harness.plan.suite import SuiteError, load_suite

    with pytest.raises(SuiteError, match=r"resolution: 100000 .*memory"):
        load_suite(_suite(tmp_path, bench["manifest"], "huge", resolution=100000))
    with pytest.raises(SuiteError, match=r"methods\[0\]\.learn\.resolution: 100000 .*memory"):
        load_suite(
            _suite(
                tmp_path,
                bench["manifest"],
                "huge-learn",
                methods=[{"name": "clic", "learn": {"resolution": 100000, "steps": 1}}],
            )
        )


def test_27_02_gpus_requested_on_a_machine_without_gpus_is_refused(bench: dict[str, Path], tmp_path: Path) -> None:
    """2. `resources: {num_gpus: 1}` without a GPU waited forever for Ray's autoscaler; now one line, exit 2."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    suite = _suite(tmp_path, bench["manifest"], "gpu", resources={"num_cpus": 1, "num_gpus": 1})
    done = _child(
        ["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--no-report", "--num-cpus", "1"],
        "harness.cli",
        timeout=150,
    )
    lines = _stderr_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "resources.num_gpus" in lines[0] and "no GPU" in lines[0], lines
    assert not store.has_results(tmp_path / "run") if (tmp_path / "run").exists() else True


def test_27_02_cuda_device_without_a_visible_gpu_is_refused(bench: dict[str, Path], tmp_path: Path) -> None:
    from harness.plan.preflight import gpu_problems
    from harness.plan.suite import load_suite

    suite = load_suite(_suite(tmp_path, bench["manifest"], "cuda", device="cuda"))
    problems = gpu_problems(suite, cluster_gpus=0)
    assert len(problems) == 1 and problems[0].startswith(f"{suite.source}: device: cuda") and "no GPU" in problems[0]
    gpus = load_suite(_suite(tmp_path, bench["manifest"], "gpus", resources={"num_gpus": 0.5}))
    assert gpu_problems(gpus, cluster_gpus=0) and not gpu_problems(gpus, cluster_gpus=1)


def test_27_03_huge_image_count_is_refused(corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """3. `clic generate --images 100000000` was a 409 GB allocation traceback."""
    capsys.readouterr()
    code = clic_main(
        [
            "generate",
            "--concept",
            str(corpus["concept"]),
            "--object",
            "chair",
            "--steps",
            "10",
            "--images",
            "100000000",
            "--out",
            str(corpus["root"] / "gen"),
        ]
    )
    line = one_error_line(capsys)
    assert code == 2 and line.startswith("clic: error: --images: 100000000") and "memory" in line, line


def test_27_04_clic_cache_that_is_a_file_or_read_only(corpus: dict[str, Path], tmp_path: Path) -> None:
    """4. CLIC_CACHE naming a file was a NotADirectoryError traceback, and a read-only one an OSError."""
    argv = _clic(corpus, "learn", "--out", str(tmp_path / "c1"))
    done = _child(argv, env={"CLIC_CACHE": str(corpus["file"])})
    lines = _stderr_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("clic: error: CLIC_CACHE: "), done.stderr[
        -2000:
    ]
    assert "not a folder" in lines[0]
    with _read_only_copy(tmp_path / "empty-cache") as cache:  # nothing cached: the tokenizer must be built
        done = _child(_clic(corpus, "learn", "--out", str(tmp_path / "c2")), env={"CLIC_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    notes = [line for line in _stderr_lines(done.stderr) if "CLIC_CACHE" in line]
    assert len(notes) == 1 and notes[0].startswith("note: CLIC_CACHE") and "read-only" in notes[0].lower(), done.stderr


class _read_only_copy:
    """A read-only bind mount of `folder` (created empty if missing); skips without the right to mount."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mount = self.folder.with_name(self.folder.name + "-ro")
        self.mount.mkdir(exist_ok=True)
        bind = subprocess.run(["mount", "--bind", str(self.folder), str(self.mount)], capture_output=True)
        if bind.returncode:
            pytest.skip("cannot bind-mount here (needs root)")
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(self.mount)], capture_output=True).returncode:
            subprocess.run(["umount", str(self.mount)])
            pytest.skip("cannot remount read-only here")
        return self.mount

    def __exit__(self, *exc: Any) -> None:
        subprocess.run(["umount", str(self.mount)], check=True)


def test_27_05_steps_beyond_the_schedulers_timesteps(
    corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """5. `--steps 5000` was diffusers' "cannot be larger than 1000" traceback, in transfer and generate."""
    for argv in (
        _clic(corpus, "transfer", "--steps", "5000"),
        [
            "generate",
            "--concept",
            str(corpus["concept"]),
            "--object",
            "chair",
            "--steps",
            "5000",
            "--out",
            str(corpus["root"] / "gen"),
        ],
    ):
        capsys.readouterr()
        assert clic_main(argv) == 2, argv
        line = one_error_line(capsys)
        assert line.startswith("clic: error: --steps: 5000") and "1000" in line and "num_train_timesteps" in line, line


def test_27_05_suite_steps_beyond_the_schedulers_timesteps(bench: dict[str, Path], tmp_path: Path) -> None:
    """5. In a suite, `transfer: {steps: 1000000000}` passed preflight and every job failed in Ray."""
    from harness.errors import UsageError
    from harness.plan.preflight import preflight

    suite = _suite(
        tmp_path,
        bench["manifest"],
        "steps",
        methods=[{"name": "clic", "learn": {"steps": 1}}],
        transfer={"t_start": [1], "steps": 1_000_000_000},
    )
    with pytest.raises(UsageError) as failed:
        preflight(suite, tmp_path / "run")
    assert "transfer.steps: 1000000000" in str(failed.value) and "num_train_timesteps 1000" in str(failed.value)
    suite = _suite(
        tmp_path,
        bench["manifest"],
        "gsteps",
        methods=[{"name": "clic", "learn": {"steps": 1}}],
        generate={"steps": 5000},
    )
    with pytest.raises(UsageError, match="generate.steps: 5000"):
        preflight(suite, tmp_path / "run")


def test_27_06_concept_on_a_model_of_another_architecture(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """6. A concept learned on `tiny` given `--model tiny-inpaint` failed inside the UNet (9 vs 4 channels)."""
    capsys.readouterr()
    assert clic_main(_clic(corpus, "transfer", "--model", "tiny-inpaint")) == 2
    line = one_error_line(capsys)
    assert line.startswith("clic: error: --model: tiny-inpaint") and "architecture" in line and "in_channels" in line
    # Another checkpoint of the same architecture is allowed, with a note.
    folder = tmp_path / "tiny-folder"
    assert clic_main(["models", "save-tiny", str(folder)]) == 0
    capsys.readouterr()
    assert clic_main(_clic(corpus, "transfer", "--model", str(folder), "--out", str(tmp_path / "o"))) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]  # not the progress bars
    assert len(notes) == 1 and notes[0].startswith("note: --model") and "same architecture" in notes[0], notes


def test_27_07_ctrl_c_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, bench: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """7. Ctrl-C printed a KeyboardInterrupt stack from runner.loop → ray.wait and exited 1."""
    from harness.execute import runner

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_suite", interrupted)
    capsys.readouterr()
    assert bench_main(["run", str(_suite(bench["root"], bench["manifest"], "ok"))]) == 130
    line = one_error_line(capsys)
    assert line.startswith("clic-bench: error: interrupted") and "run it again" in line, line


@pytest.mark.slow  # a real `clic-bench run` process with its own Ray cluster, interrupted
def test_27_07_ctrl_c_on_a_real_run_stops_its_cluster_and_resumes(tmp_path: Path) -> None:
    import signal

    dataset = DataSet(tmp_path / "set")
    suite = _suite(
        tmp_path, dataset.write([dataset.row(f"p{i}") for i in range(30)]), "sigint", seeds=[0, 1, 2, 3]
    )  # 120 short jobs (cut-and-paste reads no t_start: seeds multiply its jobs)
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        str(suite),
        "--out",
        str(run),
        "--no-report",
        "--quiet",
        "--num-cpus",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (run / "results").is_dir() or not any((run / "results").glob("*.parquet")):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    lines = [line for line in _stderr_lines(err) if "Started a local Ray instance" not in line]  # Ray's start line
    assert process.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], err
    raylets = subprocess.run(["pgrep", "-s", str(process.pid), "-f", "raylet"], capture_output=True, text=True)
    assert not raylets.stdout.strip(), "the cluster the run started is still running"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    results = store.read_results(run)
    assert results["job_id"].nunique() == 120 and results.groupby(["job_id", "metric"]).size().eq(1).all()


def test_27_08_report_into_a_read_only_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """8. `clic-bench report` on a read-only run folder said FileExistsError: 'RUN/report/images'."""
    from test_study import make_fake_run

    run_dir = make_fake_run(tmp_path / "fake", {"furniture": 2})
    assert bench_main(["report", str(run_dir)]) == 0  # a report exists, as after a run
    with _read_only_copy(run_dir) as read_only:
        capsys.readouterr()
        assert bench_main(["report", str(read_only)]) == 2
        line = one_error_line(capsys)
        assert line.startswith(f"clic-bench: error: {read_only / 'report'}") and "read-only" in line.lower(), line
        assert "--out" in line
        assert bench_main(["report", str(read_only), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (run_dir / "report" / "index.html").is_file()  # nothing lost


def test_27_09_rater_who_answered_only_the_attention_check(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """9. A partial export (only the attention check answered) was `TypeError: operation 'sub' ...`."""
    key = json.loads(corpus["key"].read_text())
    checks = {q for q, spec in key["questions"].items() if spec["check"]}
    only_check = _answers(corpus, lambda d: d.update(answers=[a for a in d["answers"] if a["question"] in checks]))
    capsys.readouterr()
    assert bench_main(["score", str(corpus["key"]), str(only_check)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("clic-bench: error: ") and "only the attention check" in line, line
    # Beside a complete rater, the partial one is left out with a note and the study is scored.
    full = _answers(corpus, lambda d: d.update(rater="r-full"))
    hostile_key = {**key, "raters": [key["raters"][0], "r-full"]}
    key_path = tmp_path / "key.json"
    key_path.write_text(json.dumps(hostile_key))
    capsys.readouterr()
    assert bench_main(["score", str(key_path), str(only_check), str(full)]) == 0
    err = _stderr_lines(capsys.readouterr().err)
    assert len(err) == 1 and "only the attention check" in err[0], err


def test_27_10_placeholder_as_the_object_word(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10. `--object "<v*>"` (or such a manifest object) made the prompt "A <v*> with <v*> style"."""
    for command in ("learn", "transfer"):
        capsys.readouterr()
        assert clic_main(_clic(corpus, command, "--object", "<v*>")) == 2
        line = one_error_line(capsys)
        assert line.startswith("clic: error: --object: ") and "placeholder" in line, line
    dataset = DataSet(tmp_path / "set")
    manifest = dataset.write([dataset.row("good"), dataset.row("bad", target_object="a <v1*> chair")])
    capsys.readouterr()
    assert bench_main(["validate", str(manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("row 1 (pair_id 'bad') column 'target_object'" in line and "placeholder" in line for line in out), out


def test_27_11_report_thumbnails_of_similar_and_long_pair_ids(tmp_path: Path) -> None:
    """11. Pair ids `chair 1` and `chair-1` shared thumbnail files; a 3000-character id got none."""
    from harness.analyse.report import image_name

    assert image_name("chair 1", "source") != image_name("chair-1", "source")
    long_name = image_name("x" * 3000, "source")
    assert len(long_name.encode()) < 200 and long_name.endswith("-source.png")
    assert image_name("chair 1", "source") == image_name("chair 1", "source")  # stable between reports
    (tmp_path / long_name).write_bytes(b"ok")  # a file name the file system takes


def test_27_11_report_shows_each_pair_its_own_images(tmp_path: Path) -> None:
    from test_study import make_fake_run

    run_dir = make_fake_run(tmp_path / "fake", {"furniture": 3})
    pairs_file = run_dir / store.PAIRS_FILE
    pairs = pq.read_table(pairs_file).to_pandas()
    renames = dict(zip(pairs["pair_id"], ["chair 1", "chair-1", "y" * 3000]))
    pairs["pair_id"] = pairs["pair_id"].map(renames)
    pairs.to_parquet(pairs_file)
    for path in store.results_dir(run_dir).glob("*.parquet"):
        frame = pq.read_table(path).to_pandas()
        frame["pair_id"] = frame["pair_id"].map(renames)
        frame.to_parquet(path)
    assert bench_main(["report", str(run_dir)]) == 0
    images = sorted(p.name for p in (run_dir / "report" / "images").iterdir())
    sources = [name for name in images if name.endswith("-source.png")]
    assert len(sources) == 3, images


def test_27_12_pack_refuses_a_folder_in_a_run_or_a_report(
    corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """12. `pack RUN --out RUN/report` overwrote the report; `--out RUN` put the pack beside the un-blinded run."""
    run = corpus["run"]
    bench_main(["report", str(run)])
    before = (run / "report" / "index.html").read_text()
    for out in (run / "report", run, run / "report" / "pack", run / "study"):
        capsys.readouterr()
        assert bench_main(["pack", str(run), "--out", str(out), "--pairs", "2"]) == 2, out
        line = one_error_line(capsys)
        assert line.startswith("clic-bench: error: --out: ") and str(out) in line, line
        assert "run folder" in line or "report" in line, line
    assert (run / "report" / "index.html").read_text() == before


def test_27_13_a_default_follows_the_users_steps(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """13. `clic generate --steps 3` failed on `--stage-one-steps` (5 by default), an option never given."""
    out = tmp_path / "gen"
    argv = ["generate", "--concept", str(corpus["concept"]), "--object", "chair", "--steps", "3", "--out", str(out)]
    assert clic_main(argv) == 0, capsys.readouterr().err
    assert (out / "image-0.png").is_file()
    from clic.methods.base import get_method

    settings = get_method("clic").task_settings("generate", "paper", {"steps": 20})
    assert settings["stage_one_steps"] == 2  # the paper's 5 of 50 as a share
    capsys.readouterr()
    assert clic_main(argv + ["--stage-one-steps", "5"]) == 2  # a value the user gave is refused
    line = one_error_line(capsys)
    assert line.startswith("clic: error: --stage-one-steps: ") and "got 5" in line, line


def test_27_13_suite_generate_steps_without_stage_one(bench: dict[str, Path], tmp_path: Path) -> None:
    """13, in a suite: `generate: {steps: 3}` was refused for the preset's stage-one length the suite never set."""
    from harness.plan.preflight import preflight

    suite = _suite(
        tmp_path,
        bench["manifest"],
        "gen3",
        methods=[{"name": "clic", "learn": {"steps": 1}}],
        tasks=["generate"],
        generate={"steps": 3},
        metrics=["ssim_psnr"],
    )
    checked = preflight(suite, tmp_path / "run", allow_random_metrics=True)
    resolved = checked.plan.methods[0].resolved.generate[0].settings  # the plan's resolved settings
    assert resolved.steps == 3 and resolved.stage_one_steps == 0  # round(3 × 5/50): the paper's share
    with pytest.raises(Exception, match=r"generate.stage_one_steps: 5 is outside \[0, 3\]"):
        preflight(
            _suite(
                tmp_path,
                bench["manifest"],
                "gen3-given",
                methods=[{"name": "clic"}],
                tasks=["generate"],
                generate={"steps": 3, "stage_one_steps": 5},
            ),
            tmp_path / "run",
            allow_random_metrics=True,
        )


def test_27_14_animated_and_tiny_images_are_noted_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """14. An animated GIF's first frame and a 1x1 image upscaled to 64 px were used without a word."""
    from clic.io import load_image, to_model_input

    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green", "blue")]
    gif = tmp_path / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    capsys.readouterr()
    for _ in range(2):
        image = load_image(gif)
    err = _stderr_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"note: {gif}: ") and "3 frames" in err[0] and "first" in err[0], err
    assert image.getpixel((0, 0)) == (255, 0, 0)
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), "white").save(dot)
    for _ in range(2):
        to_model_input(load_image(dot), None, 64, name=str(dot))
    err = _stderr_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"note: {dot}: 1x1") and "upscaled" in err[0] and "64" in err[0], err


def test_27_15_compare_errors_go_to_stderr(
    tmp_path: Path, corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """15. `compare` printed its errors on stdout."""
    empty = tmp_path / "empty-run"
    (empty / "results").mkdir(parents=True)
    capsys.readouterr()
    assert bench_main(["compare", str(empty), str(corpus["run"])]) == 2
    captured = capsys.readouterr()
    assert not captured.out.strip()
    err = _stderr_lines(captured.err)
    assert len(err) == 1 and err[0].startswith("clic-bench: error: ") and "has no results" in err[0], err


# ------------------------------------------------------------------------------ issue 27: the second sweep
def _sweep_inputs(corpus: dict[str, Path]) -> dict[str, Path]:
    root = corpus["root"] / "sweep"
    if root.is_dir():
        return {path.name: path for path in root.iterdir()}
    root.mkdir()
    fifo = root / "fifo.png"
    os.mkfifo(fifo)
    loop = root / "loop.png"
    loop.symlink_to(loop)
    (root / "zero.png").write_bytes(b"")
    (root / "stühl 椅子.png").write_bytes(corpus["image"].read_bytes())
    rotated = Image.fromarray(picture(64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90°: 48x64
    rotated.save(root / "exif.jpg", exif=exif.tobytes())
    raw_mask = np.zeros((48, 64), np.uint8)
    raw_mask[10:30, 10:40] = 255
    Image.fromarray(raw_mask).save(root / "raw-mask.png")  # drawn on the stored pixels, not the shown image
    return {path.name: path for path in root.iterdir()}


SWEEP_CLIC = {  # case: (--image, --mask, words of the one error line; None: the command works)
    "fifo as --image (hung)": ("fifo.png", None, "fifo.png: not a regular file"),
    "newline in a file name (two lines)": ("a\nb.png", None, "a\\nb.png: file not found"),
    "symlink loop as --image": ("loop.png", None, "loop.png: unreadable image: [Errno 40]"),
    "zero-byte --image": ("zero.png", None, "zero.png: not a readable image"),
    "unicode file name": ("stühl 椅子.png", None, None),
    "EXIF-rotated image, mask on the stored pixels": ("exif.jpg", "raw-mask.png", "different aspect ratio"),
}


@pytest.mark.parametrize("case", list(SWEEP_CLIC), ids=list(SWEEP_CLIC))
def test_27_sweep_clic_inputs(corpus: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str) -> None:
    image, mask, words = SWEEP_CLIC[case]
    files = _sweep_inputs(corpus)
    image_path = str(files.get(image, corpus["root"] / "sweep" / image))
    mask_path = str(files[mask]) if mask else str(corpus["mask"])
    argv = [
        "learn",
        "--model",
        "tiny",
        "--image",
        image_path,
        "--mask",
        mask_path,
        "--object",
        "chair",
        "--steps",
        "1",
        "--quiet",
        "--out",
        str(corpus["root"] / "sweep-out"),
    ]
    if "fifo" in case:  # in a child with a timeout: a regression must not hang the test run
        try:
            done = _child(argv, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("reading a FIFO as the image hangs")
        lines = _stderr_lines(done.stderr)
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr[-2000:]
        return
    capsys.readouterr()
    code = clic_main(argv)
    if words is None:
        assert code == 0, capsys.readouterr().err
        return
    line = one_error_line(capsys)
    assert code == 2 and line.startswith("clic: error: ") and words in line, line


def test_27_sweep_unreadable_run_files_are_one_line_and_keep_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run.json or pairs.parquet damaged outside the harness: `report` said a JSON/Arrow traceback (and had already
    deleted the last report's images); a later run into the folder rewrites pairs.parquet."""
    from test_study import make_fake_run

    for name, damage in (("run.json", b"{broken"), ("pairs.parquet", b"PAR1 garbage")):
        run_dir = make_fake_run(tmp_path / name, {"furniture": 2})
        assert bench_main(["report", str(run_dir)]) == 0
        images = sorted((run_dir / "report" / "images").iterdir())
        (run_dir / name).write_bytes(damage)
        capsys.readouterr()
        assert bench_main(["report", str(run_dir)]) == 2
        line = one_error_line(capsys)
        assert line.startswith(f"clic-bench: error: {run_dir / name}: not ") and "readable" in line, line
        assert sorted((run_dir / "report" / "images").iterdir()) == images  # the last report is kept
    store.write_pairs(run_dir, [{"pair_id": "p-new", "category": "furniture"}])  # as a run does: no traceback
    assert [row["pair_id"] for row in store.read_pairs(run_dir)] == ["p-new"]


def test_27_sweep_suite_files(bench: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A duplicate key, a binary file, a folder: one line each (these held already; kept as cases)."""
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text(
        f"name: d\nmanifest: {bench['manifest']}\nmethods: [{{name: cut_paste}}]\n"
        "transfer: {steps: 20}\ntransfer: {steps: 30}\n"
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad\x80")
    for suite, words in ((duplicate, "duplicate key 'transfer'"), (binary, "cannot read"), (tmp_path, "cannot read")):
        capsys.readouterr()
        assert bench_main(["run", str(suite), "--out", str(tmp_path / "run")]) == 2
        line = one_error_line(capsys)
        assert line.startswith("clic-bench: error: ") and words in line, line


def test_27_sweep_manifest_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NaN / Infinity in pattern_params (Python's json takes them) were accepted; now a row line each."""
    dataset = DataSet(tmp_path / "set")
    manifest = dataset.write(
        [
            dataset.row("good", pattern_params='{"scale": 2.0}'),
            dataset.row("nan", pattern_params='{"scale": NaN}'),
            dataset.row("inf", pattern_params='{"scale": -Infinity}'),
            dataset.row("Good"),
        ]
    )  # differs from "good" in case only: a distinct pair
    assert bench_main(["validate", str(manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("row 1 (pair_id 'nan') column 'pattern_params': NaN is not a JSON number" in line for line in out), out
    assert any("row 2 (pair_id 'inf') column 'pattern_params': -Infinity" in line for line in out), out
    assert out[-1] == "4 rows: 2 good, 2 bad"


def test_27_sweep_pair_ids_differing_in_case_get_their_own_thumbnails() -> None:
    """ "Chair1" and "chair1" were one file on case-insensitive file systems (macOS, Windows)."""
    from harness.analyse.report import image_name

    assert image_name("Chair1", "source").lower() != image_name("chair1", "source").lower()
    assert image_name("p0", "source") == "p0-source.png"  # plain ids keep plain names


@pytest.mark.parametrize("export", ["bom", "semicolon"])
def test_27_sweep_spreadsheet_csv_answers(
    corpus: dict[str, Path], tmp_path: Path, export: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV saved by a spreadsheet (a UTF-8 byte-order mark, or ';' between columns in comma-decimal locales)
    was refused as lacking the columns it has."""
    import csv

    data = json.loads(_answers(corpus, lambda d: None).read_text())
    rows = [
        {
            "pack_id": data["pack_id"],
            "rater": data["rater"],
            "question": a["question"],
            "criterion": a["criterion"],
            "place": place,
            "option": option,
        }
        for a in data["answers"]
        for place, option in enumerate(a["ranking"], start=1)
    ]
    path = tmp_path / f"{export}.csv"
    with path.open("w", encoding="utf-8-sig" if export == "bom" else "utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=";" if export == "semicolon" else ",")
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert bench_main(["score", str(corpus["key"]), str(path)]) == 0, capsys.readouterr().err


def test_27_sweep_damaged_tokenizer_cache_is_rebuilt(corpus: dict[str, Path], tmp_path: Path) -> None:
    """A tiny-tokenizer cache left half-written (a killed writer; writes are now a rename) was a JSON traceback."""
    cache = tmp_path / "cache"
    (cache / "tiny-tokenizer").mkdir(parents=True)
    (cache / "tiny-tokenizer" / "vocab.json").write_text('{"a": 1, "b"')
    (cache / "tiny-tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    done = _child(_clic(corpus, "learn", "--out", str(tmp_path / "c")), env={"CLIC_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((cache / "tiny-tokenizer" / "vocab.json").read_text())["<|endoftext|>"] == 49407
