"""`clic-bench run SUITE --set KEY=VALUE`: overrides applied to the raw suite mapping before the normal reader, so
they get the file's checks and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.plan.overrides import apply_sets, parse_set
from harness.plan.preflight import preflight

ROOT = Path(__file__).resolve().parents[2]
ONE_PAIR = ROOT / "benchmarks" / "one_pair.yaml"


def test_keys_paths_and_yaml_values() -> None:
    assert parse_set("transfer.t_start=[5,10,15]") == (["transfer", "t_start"], [5, 10, 15])
    assert parse_set("methods[1].presets=[paper, official-code]") == (
        ["methods", 1, "presets"],
        ["paper", "official-code"],
    )
    assert parse_set("resources.num_gpus=0.5") == (["resources", "num_gpus"], 0.5)
    raw = {"methods": [{"name": "clic"}, {"name": "cut_paste"}], "transfer": {"eta": [1.0]}}
    changed = apply_sets(raw, ["transfer.t_start=[5]", "methods[0].learn.steps=3", "resources.gpu_memory_gib=24"])
    assert changed == {
        "methods": [{"name": "clic", "learn": {"steps": 3}}, {"name": "cut_paste"}],
        "transfer": {"eta": [1.0], "t_start": [5]},
        "resources": {"gpu_memory_gib": 24},
    }
    assert raw == {"methods": [{"name": "clic"}, {"name": "cut_paste"}], "transfer": {"eta": [1.0]}}  # unchanged


def test_overrides_reach_the_checked_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clic.models import save_tiny

    monkeypatch.chdir(tmp_path)
    save_tiny(tmp_path / "my-model")
    checked = preflight(
        ONE_PAIR,
        tmp_path / "run",
        sets=["transfer.t_start=[1,2,3]", "model=my-model", "methods[0].learn.steps=2", "dtype=bf16"],
    )
    suite = checked.suite
    assert suite.transfer.t_start == (1, 2, 3) and suite.dtype == "bf16"
    assert suite.model == str(tmp_path / "my-model")  # relative to where it was typed, not to the suite file
    assert dict(suite.methods[0].learn)["steps"] == 2


@pytest.mark.parametrize(
    "override, says",
    [
        ("transfer.t_strat=[5]", "transfer.t_strat: unknown key (did you mean 't_start'?)"),
        ("transfer.t_start=[5, x]", "transfer.t_start"),
        ("resources.num_gpus=-1", "resources.num_gpus"),
        ("dtype=fp8", "dtype"),
        ("transfer", "--set transfer: expected KEY=VALUE"),
        (
            "methods[5].presets=[paper]",
            "--set methods[5].presets=[paper]: methods[5] does not exist (the list has 2 items)",
        ),
        ("name.x=1", "--set name.x=1: name is not a mapping"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(
    override: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(ONE_PAIR), "--out", str(tmp_path / "run"), "--set", override, "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clic-bench: error: ") and says in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_parse_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="not a key"):
        parse_set("a..b=1")
    with pytest.raises(UsageError, match="not valid YAML"):
        parse_set("a=[1, 2")
