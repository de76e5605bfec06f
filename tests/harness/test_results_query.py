"""The README's DuckDB query over RUN/results/ runs as written and agrees with the harness's own reader."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from test_store import _row

from harness import store

duckdb = pytest.importorskip("duckdb")  # in the test extras (pyproject.toml, constraints.txt)
ROOT = Path(__file__).resolve().parents[2]


def readme_query() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        r"<!-- query: tested by tests/harness/test_results_query.py -->\n```python\n(.*?)```", readme, re.S
    )
    assert found, "the README's results query block"
    code = found.group(1)
    assert len([line for line in code.strip().splitlines() if line.strip()]) == 3
    return code


def test_readme_query_reads_journal_and_compacted_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "smoke"
    values = {"clic/paper": [0.25, 0.5, 0.75, 1.0], "cut_paste/default": [2.0, 4.0, 6.0, 9.0]}
    for label, numbers in values.items():
        for index, value in enumerate(numbers):
            job_id = f"{label.split('/')[0]}-{index}"
            store.write_job_results(run, job_id, [{**_row(job_id, value=value), "label": label}])
        store.write_job_results(
            run,
            f"{label}-failed".replace("/", "-"),
            [
                {
                    **_row("x", store.STATUS_FAILED, None, float("nan")),
                    "label": label,
                    "job_id": f"{label}-failed".replace("/", "-"),
                }
            ],
        )
        if label == "clic/paper":  # half the run compacted, half still the journal
            assert store.compact_results(run, min_files=1) == 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(readme_query(), namespace)  # prints the table

    result = duckdb.sql(readme_query().split('duckdb.sql("""', 1)[1].split('""")', 1)[0]).df()
    expected = pd.DataFrame(
        [
            {"label": label, "metric": "ssim_outside", "mean": sum(v) / len(v), "n": len(v)}
            for label, v in values.items()
        ]
    )
    assert result[["label", "metric"]].values.tolist() == expected[["label", "metric"]].values.tolist()
    assert result["mean"].tolist() == pytest.approx(expected["mean"].tolist())
    assert result["n"].tolist() == expected["n"].tolist()
    assert "clic/paper" in capsys.readouterr().out
    harness_means = store.read_results(run).query("status == 'ok'").groupby("label")["value"].mean()
    assert harness_means.tolist() == pytest.approx(result["mean"].tolist())
