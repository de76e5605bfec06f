"""Bad inputs end to end through `clic-bench run`: one line per bad row/key, and the good rows still run.

The per-row checks themselves are tested where they live (tests/clic/test_io.py, tests/harness/test_manifest.py,
tests/harness/test_suite.py); this file reuses their input cases and checks what a user of `clic-bench run` sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_manifest import DataSet, picture, save, write_case_manifest

from harness import store
from harness.cli import main


def write_suite(path: Path, manifest: Path, **changes: Any) -> Path:
    suite = {
        "name": "bad-inputs",
        "model": "tiny",
        "manifest": str(manifest),
        "methods": [{"name": "cut_paste"}],
        "seeds": [0],
        "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
        "metrics": ["ssim_psnr"],
        "resources": {"num_cpus": 1, "max_retries": 1},
    }
    suite.update(changes)
    path.write_text(json.dumps(suite))  # JSON is YAML
    return path


def run_bench(suite: Path, run: Path, *extra: str) -> int:
    return main(["run", str(suite), "--out", str(run), "--quiet", "--no-report", *extra])


def test_bad_rows_are_one_line_each_and_the_good_rows_run(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing/corrupt/truncated files, empty masks, other aspect ratios, duplicate ids, paths outside the
    folder, unknown URL schemes ... are skipped with one line naming row and column; RGBA, 16-bit, palette,
    soft, full and resized masks run."""
    dataset = DataSet(tmp_path / "set")
    manifest, cases = write_case_manifest(dataset, tmp_path)
    suite = write_suite(tmp_path / "suite.yaml", manifest)
    assert run_bench(suite, tmp_path / "run") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped: ")]

    results = store.read_results(tmp_path / "run").drop_duplicates("job_id").set_index("pair_id")
    bad_rows = 0
    for index, (overrides, column, words) in enumerate(cases):
        row, pair_id = index + 2, overrides.get("pair_id", f"case-{index}")
        if column is None:  # accepted input: the job ran (or, without masks, is not applicable to cut_paste)
            expected = "not_applicable" if overrides.get("target_mask", "") is None else "ok"
            assert results.loc[pair_id, "status"] == expected, (overrides, results.loc[pair_id, "error"])
            continue
        bad_rows += 1
        mine = [line for line in lines if f" row {row} " in line]
        assert len(mine) == 1 and f"column {column!r}" in mine[0] and words in mine[0], (overrides, mine)
    assert len(lines) == bad_rows
    assert results.loc["good-0", "status"] == "ok"
    # One job per good row, none for a bad one: good-1 has good-0's exact bytes, so the two share one
    # learned concept, but each pair keeps its own result row (the pair id is part of a job's identity).
    assert len(results) == len(cases) + 2 - bad_rows
    assert results.loc["good-1", "status"] == "ok"


def test_allow_outside_runs_the_rows_outside_the_manifest_folder(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = DataSet(tmp_path / "set")
    manifest, cases = write_case_manifest(dataset, tmp_path)
    # Other bytes than the rows inside, or content addressing would make it their job (run already).
    save(picture(64, 48, seed=3), tmp_path / "outside" / "elsewhere.png")
    outside_ids = [
        f"case-{index}"
        for index, (_, _, words) in enumerate(cases)
        if words in ("absolute path refused", "path escapes the manifest's folder")
    ]
    suite = write_suite(tmp_path / "suite.yaml", manifest)
    assert run_bench(suite, tmp_path / "run", "--allow-outside") == 0
    err = capsys.readouterr().err
    assert "absolute path refused" not in err and "escapes the manifest's folder" not in err
    results = store.read_results(tmp_path / "run").drop_duplicates("job_id")
    outside = results[results["pair_id"].isin(outside_ids)]
    # Both rows name the same file (by absolute path and by ../): one learned concept, a result per row.
    assert list(outside["status"]) == ["ok", "ok"], outside["error"].tolist()
    assert outside["concept_id"].nunique() == 1


def table(dataset: DataSet, change: str) -> Path:
    rows = [dataset.row("p0")]
    data = {name: [row.get(name) for row in rows] for name in rows[0]}
    if change == "missing column":
        del data["target_object"]
    else:  # wrong column type
        data["pair_id"] = pa.array([7], type=pa.int64())
    path = dataset.root / "manifest.parquet"
    pq.write_table(pa.table(data), path)
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        ("missing column", "column 'target_object': missing required column"),
        ("wrong type", "column 'pair_id': has type int64, expected string"),
    ],
)
def test_an_unusable_manifest_stops_the_run_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, words: str
) -> None:
    manifest = table(DataSet(tmp_path / "set"), change)
    assert run_bench(write_suite(tmp_path / "suite.yaml", manifest), tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"skipped: {manifest}: {words}",
        f"clic-bench: error: {manifest}: the manifest cannot be used (see the lines above)",
    ]
    assert not (tmp_path / "run" / store.RESULTS_DIR).exists()


SUITE_ERRORS = [
    ({"methods": [{"name": "dreambooth"}]}, "methods[0].name: unknown method 'dreambooth'"),
    ({"methods": [{"name": "cut_paste", "presets": ["fast"]}]}, "methods[0].presets[0]: unknown preset 'fast'"),
    ({"seed": [0]}, "seed: unknown key (did you mean 'seeds'?)"),
    ({"transfer": {"t_start": [10], "steps": 0}}, "transfer.steps: must be positive, got 0"),
    ({"methods": [{"name": "cut_paste", "learn": {"steps": -3}}]}, "methods[0].learn.steps: must be positive, got -3"),
    ({"transfer": {"t_start": [0], "steps": 20}}, "transfer.t_start[0]: 0 is outside [1, 19]"),
    ({"transfer": {"t_start": [20], "steps": 20}}, "transfer.t_start[0]: 20 is outside [1, 19]"),
]


@pytest.mark.parametrize("changes, words", SUITE_ERRORS, ids=[w.split(":")[0] for _, w in SUITE_ERRORS])
def test_a_bad_suite_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], words: str
) -> None:
    manifest = DataSet(tmp_path / "set").write([DataSet(tmp_path / "set").row("p0")])
    suite = write_suite(tmp_path / "suite.yaml", manifest, **changes)
    assert run_bench(suite, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"clic-bench: error: {suite}: ") and words in err[0], err
    assert not (tmp_path / "run").exists()  # refused before anything ran
