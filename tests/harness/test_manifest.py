"""harness.plan.manifest: one line per bad row, good rows still returned; the CLI's exit codes; the folder builder."""

from __future__ import annotations

import io
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import harness.plan.manifest_files as manifest_files
from harness.cli import main
from harness.plan.folder import manifest_from_folder
from harness.plan.manifest import (
    GROUND_TRUTH_FIELDS,
    MANIFEST_SCHEMA,
    PairSpec,
    Problem,
    load_manifest,
    write_manifest,
)


def disc(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (0.3 * min(width, height)) ** 2


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 40 * seed % 256)], -1).astype(np.uint8)


def save(array: np.ndarray, path: Path, **options: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path.name


class DataSet:
    """A manifest folder with images and masks in the forms the tests need."""

    def __init__(self, root: Path) -> None:
        self.root = root
        save(picture(64, 48), root / "img" / "source.png")
        save(picture(64, 48, 1), root / "img" / "target.jpg", quality=90)
        save(disc(64, 48).astype(np.uint8) * 255, root / "masks" / "source.png")
        save(disc(64, 48).astype(np.uint8) * 255, root / "masks" / "target.png")

    def row(self, pair_id: str, **overrides: Any) -> dict[str, Any]:
        row = {
            "pair_id": pair_id,
            "category": "furniture",
            "source_image": "img/source.png",
            "source_mask": "masks/source.png",
            "source_object": "chair",
            "target_image": "img/target.jpg",
            "target_mask": "masks/target.png",
            "target_object": "chair",
            "target_mask_gt": None,
            "concept": "stripes",
            "tags": ["test"],
        }
        row.update(overrides)
        return row

    def write(self, rows: list[dict[str, Any]], name: str = "manifest.parquet") -> Path:
        """Like write_manifest, but lets nulls into required columns (write_manifest refuses them)."""
        columns = {**{f.name: f for f in MANIFEST_SCHEMA}, **{f.name: f for f in GROUND_TRUTH_FIELDS}}
        names = [n for n in columns if n in MANIFEST_SCHEMA.names or any(n in row for row in rows)]
        schema = pa.schema([columns[n].with_nullable(True) for n in names])
        path = self.root / name
        pq.write_table(pa.Table.from_pylist([{n: row.get(n) for n in names} for row in rows], schema=schema), path)
        return path


@pytest.fixture
def dataset(tmp_path: Path) -> DataSet:
    return DataSet(tmp_path / "set")


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://clic-tests-{uuid.uuid4().hex}"
    yield root
    filesystem = fsspec.filesystem("memory")
    if filesystem.exists(root):
        filesystem.rm(root, recursive=True)


def problems_by_row(report: Any) -> dict[int, list[Problem]]:
    grouped: dict[int, list[Problem]] = {}
    for problem in report.problems:
        grouped.setdefault(problem.row, []).append(problem)
    return grouped


def build_inputs(data: DataSet, outside: Path) -> None:
    root = data.root
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3] = picture(64, 48)
    rgba[..., 3] = 200
    save(rgba, root / "img" / "rgba.png")
    (root / "img" / "deep16.png").write_bytes(
        _png16_gray(np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16))
    )
    (root / "img" / "corrupt.png").write_bytes(b"not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (root / "img" / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    region = disc(64, 48)
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[region] = (255, 255, 255)
    save(rgb, root / "masks" / "rgb.png")
    rgba_mask = np.zeros((48, 64, 4), np.uint8)
    rgba_mask[..., :3] = 255
    rgba_mask[..., 3] = region.astype(np.uint8) * 255
    save(rgba_mask, root / "masks" / "rgba.png")
    palette = Image.frombytes("P", (64, 48), region.astype(np.uint8).tobytes())
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    palette.save(root / "masks" / "palette.png")
    yy, xx = np.mgrid[:48, :64]
    save((255 * np.exp(-((xx - 32) ** 2 + (yy - 24) ** 2) / 200)).astype(np.uint8), root / "masks" / "soft.png")
    save(np.zeros((48, 64), np.uint8), root / "masks" / "empty.png")
    save(np.full((48, 64), 255, np.uint8), root / "masks" / "full.png")
    save(disc(128, 96).astype(np.uint8) * 255, root / "masks" / "double.png")
    save(disc(64, 64).astype(np.uint8) * 255, root / "masks" / "square.png")
    save(picture(64, 48), outside / "elsewhere.png")


def _png16_gray(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")  # uint16 -> I;16 -> a 16-bit PNG
    return buffer.getvalue()


# (overrides, bad column or None for "accepted", words the line must contain)
CASES: list[tuple[dict[str, Any], str | None, str]] = [
    ({"source_mask": "masks/none.png"}, "source_mask", "file not found: masks/none.png"),
    ({"target_image": "img/corrupt.png"}, "target_image", "not a readable image"),
    ({"source_image": "img/truncated.png"}, "source_image", "truncated"),
    ({"source_image": "img/rgba.png"}, None, ""),
    ({"source_image": "img/deep16.png"}, None, ""),
    ({"source_mask": "masks/rgb.png"}, None, ""),
    ({"source_mask": "masks/rgba.png"}, None, ""),
    ({"source_mask": "masks/palette.png"}, None, ""),
    ({"source_mask": "masks/soft.png"}, None, ""),
    ({"target_mask": "masks/empty.png"}, "target_mask", "mask is empty"),
    ({"target_mask": "masks/full.png"}, None, ""),
    ({"target_mask_gt": "masks/double.png"}, None, ""),
    (
        {"target_mask": "masks/square.png"},
        "target_mask",
        "64x64 (masks/square.png) has a different aspect ratio than target_image 64x48",
    ),
    ({"pair_id": "good-0"}, "pair_id", "duplicate pair_id (first used in row 0)"),
    ({"source_image": "OUTSIDE"}, "source_image", "absolute path refused"),
    ({"source_image": "../outside/elsewhere.png"}, "source_image", "path escapes the manifest's folder"),
    ({"target_mask": "ftp+weird://host/m.png"}, "target_mask", "URL scheme 'ftp+weird' is not supported"),
    ({"source_object": None}, "source_object", "missing value (required)"),
    ({"category": "  "}, "category", "empty value (required)"),
    ({"source_mask": None, "target_mask": None}, None, ""),  # automatic source mask, RoI matching
    ({"pattern_params": "{not json"}, "pattern_params", "not valid JSON"),
]


def write_case_manifest(dataset: DataSet, tmp_path: Path) -> tuple[Path, list[tuple[dict[str, Any], str | None, str]]]:
    outside = tmp_path / "outside"
    build_inputs(dataset, outside)
    rows = [dataset.row("good-0"), dataset.row("good-1")]
    for index, (overrides, _, _) in enumerate(CASES):
        values = {k: (str(outside / "elsewhere.png") if v == "OUTSIDE" else v) for k, v in overrides.items()}
        rows.append(dataset.row(values.pop("pair_id", f"case-{index}"), **values))
    return dataset.write(rows), CASES


def test_every_bad_row_gives_one_line_and_good_rows_come_back(dataset: DataSet, tmp_path: Path) -> None:
    path, cases = write_case_manifest(dataset, tmp_path)
    report = load_manifest(path)
    grouped = problems_by_row(report)
    good_ids = {spec.pair_id for spec in report.rows}
    for index, (overrides, column, words) in enumerate(cases):
        row = index + 2
        if column is None:
            assert row not in grouped, (overrides, [str(p) for p in grouped.get(row, [])])
            assert f"case-{index}" in good_ids or overrides.get("pair_id") == "good-0"
            continue
        lines = grouped.get(row, [])
        assert len(lines) == 1, (overrides, [str(p) for p in lines])
        line = str(lines[0])
        assert "\n" not in line
        assert f"row {row} " in line and f"column {column!r}" in line and words in line, line
        assert line.startswith(f"{path} row {row} (pair_id ")
    assert {"good-0", "good-1"} <= good_ids
    assert report.total_rows == len(cases) + 2
    assert report.usable and not report.ok
    assert report.summary() == f"{len(cases) + 2} rows: {len(report.rows)} good, {len(grouped)} bad"


def test_good_rows_are_resolved_pair_specs(dataset: DataSet) -> None:
    path = dataset.write([dataset.row("p0"), dataset.row("p1", source_mask=None, tags=None, concept=None)])
    report = load_manifest(path)
    assert report.ok and [s.pair_id for s in report.rows] == ["p0", "p1"]
    first, second = report.rows
    assert isinstance(first, PairSpec)
    assert first.source_image == str((dataset.root / "img" / "source.png").resolve())
    assert first.tags == ("test",) and first.raw["source_image"] == "img/source.png"
    assert second.source_mask is None and second.tags == () and second.concept is None
    json.dumps(first.to_dict())


def test_allow_outside_accepts_absolute_and_parent_paths(dataset: DataSet, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    save(picture(64, 48), outside / "elsewhere.png")
    rows = [
        dataset.row("absolute", source_image=str(outside / "elsewhere.png")),
        dataset.row("parent", source_image="../outside/elsewhere.png"),
        dataset.row("file-url", source_image=(outside / "elsewhere.png").as_uri()),
    ]
    path = dataset.write(rows)
    refused = load_manifest(path)
    assert [p.column for p in refused.problems] == ["source_image"] * 3 and not refused.rows
    allowed = load_manifest(path, allow_outside=True)
    assert allowed.ok and len(allowed.rows) == 3
    assert {spec.source_image for spec in allowed.rows} == {str((outside / "elsewhere.png").resolve())}


def test_fsspec_uris_are_opened(dataset: DataSet, memory_root: str) -> None:
    filesystem = fsspec.filesystem("memory")
    with filesystem.open(f"{memory_root}/remote.png", "wb") as handle:
        handle.write((dataset.root / "img" / "source.png").read_bytes())
    path = dataset.write(
        [
            dataset.row("remote", source_image=f"{memory_root}/remote.png"),
            dataset.row("gone", source_image=f"{memory_root}/gone.png"),
        ]
    )
    report = load_manifest(path)
    assert [s.pair_id for s in report.rows] == ["remote"] and report.rows[0].source_image == f"{memory_root}/remote.png"
    assert len(report.problems) == 1 and "file not found" in str(report.problems[0])


def test_a_manifest_at_a_uri_resolves_relative_paths_there(dataset: DataSet, memory_root: str) -> None:
    filesystem = fsspec.filesystem("memory")
    for relative in ("img/source.png", "img/target.jpg", "masks/source.png", "masks/target.png"):
        with filesystem.open(f"{memory_root}/set/{relative}", "wb") as handle:
            handle.write((dataset.root / relative).read_bytes())
    local = dataset.write([dataset.row("p0")], name="copy.parquet")
    with filesystem.open(f"{memory_root}/set/manifest.parquet", "wb") as handle:
        handle.write(local.read_bytes())
    report = load_manifest(f"{memory_root}/set/manifest.parquet")
    assert report.ok, report.lines()
    assert report.rows[0].target_mask == f"{memory_root}/set/masks/target.png"


def test_each_file_is_opened_once(dataset: DataSet, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_probe, real_mask = manifest_files.probe_image, manifest_files.load_mask
    monkeypatch.setattr(
        manifest_files, "probe_image", lambda source, **kw: opened.append(str(source)) or real_probe(source, **kw)
    )
    monkeypatch.setattr(
        manifest_files, "load_mask", lambda source, **kw: opened.append(str(source)) or real_mask(source, **kw)
    )
    report = load_manifest(dataset.write([dataset.row(f"p{i}") for i in range(20)]))
    assert report.ok and len(report.rows) == 20
    assert len(opened) == len(set(opened)) == 4


# ------------------------------------------------------------------------------------ manifest level


def write_table(path: Path, columns: dict[str, pa.Array]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def valid_columns(dataset: DataSet) -> dict[str, pa.Array]:
    row = dataset.row("p0")
    return {name: pa.array([row[name]], type=MANIFEST_SCHEMA.field(name).type) for name in MANIFEST_SCHEMA.names}


def test_missing_required_column_is_a_manifest_problem(dataset: DataSet) -> None:
    columns = valid_columns(dataset)
    del columns["target_object"]
    report = load_manifest(write_table(dataset.root / "m.parquet", columns))
    assert not report.usable and report.exit_code() == 2
    assert report.lines() == [f"{dataset.root / 'm.parquet'}: column 'target_object': missing required column"]


def test_wrong_column_type_is_a_manifest_problem(dataset: DataSet) -> None:
    columns = valid_columns(dataset)
    columns["pair_id"] = pa.array([7], type=pa.int64())
    report = load_manifest(write_table(dataset.root / "m.parquet", columns))
    assert report.lines() == [f"{dataset.root / 'm.parquet'}: column 'pair_id': has type int64, expected string"]
    assert report.exit_code() == 2


def test_unknown_column_is_named_with_a_hint(dataset: DataSet) -> None:
    columns = valid_columns(dataset)
    columns["target_gt_mask"] = pa.array([None], type=pa.string())
    report = load_manifest(write_table(dataset.root / "m.parquet", columns))
    assert len(report.lines()) == 1
    assert "column 'target_gt_mask': unknown column (did you mean 'target_mask_gt'?)" in report.lines()[0]
    assert not report.usable


def test_compatible_arrow_types_are_accepted(dataset: DataSet) -> None:
    columns = valid_columns(dataset)
    columns["category"] = pa.array(["furniture"]).dictionary_encode()  # pandas categoricals
    columns["source_object"] = pa.array(["chair"], type=pa.large_string())
    columns["tags"] = pa.array([["a"]], type=pa.large_list(pa.string()))
    report = load_manifest(write_table(dataset.root / "m.parquet", columns))
    assert report.ok, report.lines()
    assert report.rows[0].category == "furniture" and report.rows[0].tags == ("a",)


def test_unreadable_parquet_and_missing_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    report = load_manifest(broken)
    assert report.exit_code() == 2 and "not a readable Parquet file" in report.lines()[0]
    assert load_manifest(tmp_path / "absent.parquet").lines() == [f"{tmp_path / 'absent.parquet'}: file not found"]


def test_write_manifest_refuses_unknown_keys_and_null_required_values(dataset: DataSet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not manifest column"):
        write_manifest([{"pair_id": "p", "colour": "red"}], tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="row 1: required column.*target_image"):
        write_manifest([dataset.row("p0"), dataset.row("p1", target_image=None)], tmp_path / "m.parquet")
    path = write_manifest([dataset.row("p0", pattern="stripes")], tmp_path / "m.parquet")
    assert pq.read_table(path).schema.names == [*MANIFEST_SCHEMA.names, "pattern"]


# -------------------------------------------------------------------------------------------- CLI


def test_validate_exit_codes_and_output(dataset: DataSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = dataset.write([dataset.row("p0"), dataset.row("p1")], name="good.parquet")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.splitlines() == ["2 rows: 2 good, 0 bad"]

    bad = dataset.write([dataset.row("p0"), dataset.row("p1", source_mask="masks/p1.png")], name="bad.parquet")
    assert main(["validate", str(bad)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{bad} row 1 (pair_id 'p1') column 'source_mask': file not found: masks/p1.png",
        "2 rows: 1 good, 1 bad",
    ]

    outside = dataset.write([dataset.row("p0", source_image="../elsewhere.png")], name="outside.parquet")
    save(picture(64, 48), dataset.root.parent / "elsewhere.png")
    assert main(["validate", str(outside)]) == 1
    capsys.readouterr()
    assert main(["validate", str(outside), "--allow-outside"]) == 0
    capsys.readouterr()

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 nonsense")
    assert main(["validate", str(broken)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0].startswith(f"{broken}: not a readable Parquet file")
        and out[-1] == "rows not checked: the manifest itself is unusable"
    )


# ---------------------------------------------------------------------------------------- from-folder


def make_pair(folder: Path, *, source: str = "source.png", with_masks: bool = True, meta: dict | None = None) -> None:
    save(picture(64, 48), folder / source, **({"quality": 90} if source.endswith(".jpg") else {}))
    save(picture(64, 48, 2), folder / "target.png")
    if with_masks:
        save(disc(64, 48).astype(np.uint8) * 255, folder / "source_mask.png")
        save(disc(64, 48).astype(np.uint8) * 255, folder / "target_mask.png")
        save(disc(64, 48).astype(np.uint8) * 255, folder / "target_mask_gt.png")
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))


def test_from_folder_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "pairs"
    make_pair(root / "chair" / "c1")
    make_pair(root / "chair" / "c2", source="source.jpg", with_masks=False)
    (root / "ring").mkdir(parents=True)
    (root / "ring" / "meta.json").write_text(json.dumps({"source_object": "ring", "target_object": "necklace"}))
    make_pair(root / "ring" / "r1", meta={"concept": "filigree", "tags": ["gold"], "pattern_params": {"period": 4}})
    (root / ".cache").mkdir()

    assert main(["manifest", "from-folder", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {root / 'manifest.parquet'}: 3 rows: 3 good, 0 bad"]
    assert main(["validate", str(root / "manifest.parquet")]) == 0
    capsys.readouterr()

    table = pq.read_table(root / "manifest.parquet")
    assert table.schema.field("pair_id").type == pa.string()
    assert set(MANIFEST_SCHEMA.names) <= set(table.schema.names)
    rows = {row["pair_id"]: row for row in table.to_pylist()}
    assert rows["c1"]["source_image"] == "chair/c1/source.png" and rows["c1"]["source_object"] == "chair"
    assert rows["c2"]["source_image"] == "chair/c2/source.jpg"
    assert rows["c2"]["source_mask"] is None and rows["c2"]["target_mask"] is None
    assert rows["r1"]["category"] == "ring" and rows["r1"]["target_object"] == "necklace"
    assert rows["r1"]["concept"] == "filigree" and rows["r1"]["tags"] == ["gold"]
    assert json.loads(rows["r1"]["pattern_params"]) == {"period": 4}

    report = load_manifest(root / "manifest.parquet")
    assert report.ok and {s.pair_id for s in report.rows} == {"c1", "c2", "r1"}


def test_from_folder_reports_convention_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "pairs"
    make_pair(root / "chair" / "c1")
    (root / "chair" / "c2").mkdir(parents=True)
    save(picture(64, 48), root / "chair" / "c2" / "target.png")
    save(picture(64, 48), root / "chair" / "c1" / "source-mask.png")
    assert main(["manifest", "from-folder", str(root)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{root / 'chair' / 'c1' / 'source-mask.png'}: unexpected image file (expected source.*, source_mask.*, target.*, target_mask.*, target_mask_gt.*, expected.*)",
        f"{root / 'chair' / 'c2'}: missing source.png (or .jpg, .jpeg, .webp, .bmp, .tif, .tiff)",
        f"no manifest written: 2 problem(s) in {root}",
    ]
    assert not (root / "manifest.parquet").exists()


def test_from_folder_with_out_elsewhere(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    make_pair(root / "chair" / "c1")
    path = manifest_from_folder(root, tmp_path / "manifests" / "chairs.parquet")
    assert pq.read_table(path).to_pylist()[0]["source_image"] == "../pairs/chair/c1/source.png"
    assert load_manifest(path, allow_outside=True).ok


# ------------------------------------------------------------------------------------------- timing


@pytest.mark.slow  # a throughput measurement (printed, not asserted)
def test_time_validating_1000_rows(tmp_path: Path) -> None:
    """Every row has its own files (512 px PNG images, JPEG targets, PNG masks), so no cache hides work."""
    root = tmp_path / "big"
    encoded = {}
    for name, array, fmt in (
        ("source.png", picture(512, 512), "PNG"),
        ("target.jpg", picture(512, 512, 3), "JPEG"),
        ("mask.png", disc(512, 512).astype(np.uint8) * 255, "PNG"),
    ):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, fmt)
        encoded[name] = buffer.getvalue()
    rows = []
    for index in range(1000):
        folder = root / f"p{index}"
        folder.mkdir(parents=True)
        for name, data in encoded.items():
            (folder / name).write_bytes(data)
        shutil.copyfile(folder / "mask.png", folder / "target_mask.png")
        rows.append(
            {
                "pair_id": f"p{index}",
                "category": "furniture",
                "source_object": "chair",
                "target_object": "chair",
                "source_image": f"p{index}/source.png",
                "source_mask": f"p{index}/mask.png",
                "target_image": f"p{index}/target.jpg",
                "target_mask": f"p{index}/target_mask.png",
            }
        )
    path = write_manifest(rows, root / "manifest.parquet")
    start = time.perf_counter()
    report = load_manifest(path)
    elapsed = time.perf_counter() - start
    assert report.ok and len(report.rows) == 1000
    print(f"\nvalidated 1000 rows (4000 files, 512x512) with check_files=True in {elapsed:.2f} s")


# ------------------------------------------------------------------ file facts cached in the run folder (issue 25)
def test_file_checks_and_digests_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    """A resume does not open the manifest's files again: their checks and sha256 digests are kept in
    RUN/file_facts.json by (path, size, mtime); a file whose mtime changes is read again."""
    import hashlib
    import os

    from harness.plan import file_facts, jobs
    from harness.plan import manifest_files as files_module

    folder = tmp_path / "set"
    folder.mkdir()
    image = folder / "a.png"
    Image.new("RGB", (48, 32), (10, 20, 30)).save(image)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    try:
        file_facts.use_run_folder(run_dir)
        assert files_module.check_file("image", str(image)).size == (48, 32)
        jobs.file_digest.cache_clear()
        assert jobs.file_digest(str(image)) == hashlib.sha256(image.read_bytes()).hexdigest()
        file_facts.save(run_dir)
        assert (run_dir / file_facts.FILE_FACTS).is_file()

        file_facts.forget()  # a new process on the same folder
        jobs.file_digest.cache_clear()
        file_facts.use_run_folder(run_dir)
        opened = []
        real_check = files_module._check_file_now
        monkeypatch.setattr(files_module, "_check_file_now", lambda *a: opened.append(a) or real_check(*a))
        real_open = open
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
        assert files_module.check_file("image", str(image)).size == (48, 32)
        assert jobs.file_digest(str(image)) == hashlib.sha256(image.read_bytes()).hexdigest()
        assert opened == []

        Image.new("RGB", (40, 40), (1, 2, 3)).save(image)  # edited: another size, another mtime
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        jobs.file_digest.cache_clear()
        assert files_module.check_file("image", str(image)).size == (40, 40)
        assert jobs.file_digest(str(image)) == hashlib.sha256(image.read_bytes()).hexdigest()
        assert opened  # read again
    finally:
        file_facts.forget()
        jobs.file_digest.cache_clear()
