"""harness.plan.suite: suite files, their defaults, and one-line errors naming the file and key path."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

import clic.methods
from harness.errors import UsageError
from harness.plan.suite import DEFAULT_METRICS, MethodSpec, Suite, SuiteError, load_suite, suite_from_dict


class FakeMethod:
    """What the suite reader asks of a method, without torch: its presets and a check of its config."""

    presets: dict = {"default": {}}

    def preset_terms(self, preset: str | None = None) -> dict:
        return {}

    def supports(self, task: str) -> bool:
        return True

    def resolve(self, task: str, preset: str | None = None, overrides: dict | None = None) -> FakeSettings:
        """The one resolution function's contract: the preset's values with the overrides, validated."""
        merged = {**dict(self.presets[preset].get(task, {})), **dict(overrides or {})}
        if task == "transfer":
            t_start, steps = merged.get("t_start", 5), merged.get("steps", 50)
            if not 1 <= t_start < steps:
                raise ValueError(f"t_start must lie in [1, {steps - 1}] (steps kept before editing), got {t_start}")
        return FakeSettings(merged)


class FakeSettings(dict):
    terms: dict = {}

    def to_dict(self) -> dict:
        return dict(self)


class FakeCLiC(FakeMethod):
    presets = {"paper": {}, "official-code": {"transfer": {"t_start": 18}}}
    default_preset = "paper"


class FakeOther(FakeMethod):
    presets = {"default": {}}


class FakeNoDefault(FakeMethod):
    presets = {"a": {}, "b": {}}


@pytest.fixture(autouse=True)
def fake_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Methods registered under test names, so these tests never import torch or a method being written."""
    module = types.ModuleType("fake_suite_methods")
    module.FakeCLiC, module.FakeOther, module.FakeNoDefault = FakeCLiC, FakeOther, FakeNoDefault
    monkeypatch.setitem(sys.modules, "fake_suite_methods", module)
    monkeypatch.setattr(
        clic.methods,
        "REGISTRY",
        {
            "clic": "fake_suite_methods:FakeCLiC",
            "other": "fake_suite_methods:FakeOther",
            "nodefault": "fake_suite_methods:FakeNoDefault",
            "broken": "fake_suite_methods_missing:Nothing",
        },
    )


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """A benchmarks/ folder beside a manifests/ folder, as in the repository."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "synth.parquet").write_bytes(b"")
    (tmp_path / "manifests" / "more.parquet").write_bytes(b"")
    (tmp_path / "benchmarks").mkdir()
    return tmp_path / "benchmarks"


FULL = {
    "name": "smoke",
    "description": "two methods on the synthetic set",
    "manifest": "../manifests/synth.parquet",
    "model": "tiny",
    "methods": [
        {
            "name": "clic",
            "presets": ["paper", "official-code"],
            "loss_weights": {"att": 0.25},
            "learn": {"steps": 20, "lr": 1e-4, "resolution": 64},
        },
        {"name": "other"},
    ],
    "seeds": [0, 1],
    "transfer": {"t_start": [5, 10], "eta": [0, 1.5], "steps": 20, "guidance_scale": 5},
    "generate": {"objects": ["chair"], "stage_one_steps": 2, "steps": 10, "images_per_seed": 2},
    "match": {"enabled": False, "steps": 30},
    "metrics": ["clip_image", "lpips"],
    "metric_options": {"clip": {"model": "ViT-B-32"}, "lpips": {"batch_size": 4}},
    "resources": {"num_cpus": 2, "num_gpus": 0.25},
    "tasks": ["transfer", "generate", "match"],
    "limit_pairs": 3,
    "categories": ["furniture"],
}


DELETE = object()


def write(bench: Path, data: Any, name: str = "smoke.yaml") -> Path:
    path = bench / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def edited(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(FULL))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        key = int(last) if last.isdigit() else last
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    return data


def test_full_suite_is_read(bench: Path) -> None:
    suite = load_suite(write(bench, FULL))
    assert suite.name == "smoke" and suite.model == "tiny"
    assert suite.manifests == (str((bench.parent / "manifests" / "synth.parquet").resolve()),)
    clic_spec, other = suite.methods
    assert clic_spec == MethodSpec(
        "clic", ("paper", "official-code"), {"att": 0.25}, {"steps": 20, "lr": 1e-4, "resolution": 64}
    )
    assert other.presets == ("default",) and dict(other.learn) == {}
    assert suite.transfer.t_start == (5, 10) and suite.transfer.eta == (0.0, 1.5)
    assert suite.transfer.guidance_scale == 5.0 and isinstance(suite.transfer.guidance_scale, float)
    assert suite.generate.objects == ("chair",) and suite.generate.images_per_seed == 2
    assert not suite.match.enabled and suite.match.steps == 30
    assert suite.resources.num_gpus == 0.25
    assert suite.tasks == ("transfer", "generate", "match")
    assert suite.limit_pairs == 3 and suite.categories == ("furniture",)
    assert suite.metric_options["clip"]["model"] == "ViT-B-32"


def test_defaults_of_a_minimal_suite(bench: Path) -> None:
    suite = load_suite(
        write(bench, {"manifest": "../manifests/synth.parquet", "methods": [{"name": "clic"}]}, "minimal.yaml")
    )
    assert suite.name == "minimal" and suite.model == "tiny" and suite.description == ""
    assert suite.methods == (MethodSpec("clic", ("paper",)),)
    assert suite.seeds == (0,)
    assert suite.transfer.t_start is None and suite.transfer.eta is None
    assert (suite.transfer.steps, suite.transfer.guidance_scale) == (50, 7.5)
    assert (
        suite.generate.objects,
        suite.generate.stage_one_steps,
        suite.generate.steps,
        suite.generate.images_per_seed,
    ) == ((), None, 50, 1)
    assert suite.match.enabled and suite.match.steps == 500
    assert suite.metrics == DEFAULT_METRICS
    assert suite.resources.num_cpus == 1.0 and suite.resources.num_gpus == 0.0
    assert suite.tasks == ("transfer",) and suite.limit_pairs is None and suite.categories is None


def test_to_dict_is_canonical_json_and_round_trips(bench: Path) -> None:
    suite = load_suite(write(bench, FULL))
    data = suite.to_dict()
    text = json.dumps(data, sort_keys=True)
    assert data["transfer"]["eta"] == [0.0, 1.5] and data["manifests"] == list(suite.manifests)
    assert suite_from_dict(data, source="again") == suite
    # The same settings written differently (ints for floats, a single manifest as a list) hash the same.
    rewritten = edited(transfer__eta=[0.0, 1.5], transfer__guidance_scale=5.0, manifest=["../manifests/synth.parquet"])
    assert (
        json.dumps(load_suite(write(bench, rewritten, "b.yaml")).to_dict() | {"name": "smoke"}, sort_keys=True) == text
    )


def test_manifest_list_uri_model_folder_and_float_notation(bench: Path) -> None:
    (bench / "models" / "sd14").mkdir(parents=True)
    text = """
manifest: [../manifests/synth.parquet, ../manifests/more.parquet, "s3://bucket/set/manifest.parquet"]
model: models/sd14
methods: [{name: clic, learn: {lr: 1e-5}}]
"""
    suite = load_suite(write(bench, text))
    assert suite.manifests[1].endswith("more.parquet") and suite.manifests[2] == "s3://bucket/set/manifest.parquet"
    assert suite.model == str((bench / "models" / "sd14").resolve())
    assert suite.methods[0].learn["lr"] == 1e-5
    hf = load_suite(
        write(
            bench,
            {
                "manifest": "../manifests/synth.parquet",
                "model": "CompVis/stable-diffusion-v1-4",
                "methods": [{"name": "clic"}],
            },
        )
    )
    assert hf.model == "CompVis/stable-diffusion-v1-4"


def test_loss_weights_fold_into_terms() -> None:
    spec = MethodSpec("clic", ("paper",), {"con": 0.5, "att": 0.25}, {"steps": 10})
    base = {"con": {"weight": 1.0, "alpha": 0.5}, "att": 0.5, "roi": 0.5}
    assert spec.learn_overrides(base) == {"steps": 10, "terms": {"con": {"weight": 0.5, "alpha": 0.5}, "att": 0.25}}


ERRORS = [
    (edited(seed=[1]), "seed: unknown key (did you mean 'seeds'?)"),
    (edited(transfer__tstart=[5]), "transfer.tstart: unknown key (did you mean 't_start'?)"),
    (edited(methods__0__lr=1), "methods[0].lr: unknown key"),
    (
        edited(methods__0__name="dreambooth"),
        "methods[0].name: unknown method 'dreambooth' (known: broken, clic, nodefault, other)",
    ),
    (
        edited(methods__1={"name": "clic", "presets": ["fast"]}),
        "methods[1].presets[0]: unknown preset 'fast' for method 'clic' (known: official-code, paper)",
    ),
    (
        edited(methods__1={"name": "nodefault"}),
        "methods[1].presets: missing: method 'nodefault' has several presets (a, b) and no default",
    ),
    (edited(methods__1={"name": "broken"}), "methods[1].name: method 'broken' cannot be loaded (ModuleNotFoundError"),
    (edited(metrics=["clip_image", "fid"]), "metrics[1]: unknown metric 'fid' (known: "),
    (edited(metric_options={"fid": {}}), "metric_options.fid: no metric of this suite reads options 'fid'"),
    (edited(transfer__steps=-5), "transfer.steps: must be positive, got -5"),
    (edited(methods__0__learn__steps=0), "methods[0].learn.steps: must be positive, got 0"),
    (edited(generate__steps=0), "generate.steps: must be positive, got 0"),
    (edited(match__steps=-1), "match.steps: must be positive, got -1"),
    (edited(transfer__t_start=[5, 21]), "transfer.t_start[1]: 21 is outside [1, 19] (T = transfer.steps = 20)"),
    (edited(transfer__t_start=[0]), "transfer.t_start[0]: 0 is outside [1, 19]"),
    (
        edited(transfer__t_start=DELETE, transfer__steps=10),
        "methods[0].presets[1]: preset 'official-code' of method 'clic' with transfer {'steps': 10, 'guidance_scale': 5.0, "
        "'eta': 0.0}: t_start must lie in [1, 9] (steps kept before editing), got 18 (change transfer or the preset)",
    ),
    (edited(generate__stage_one_steps=11), "generate.stage_one_steps: 11 is outside [0, 10]"),
    (edited(transfer__t_start=10), "transfer.t_start: expected a list, got int 10"),
    (edited(seeds="0"), "seeds: expected a list, got str '0'"),
    (edited(seeds=[0, 0]), "seeds[1]: duplicate 0"),
    (edited(transfer__steps=10.5), "transfer.steps: expected an integer, got float 10.5"),
    (edited(generate__steps=True), "generate.steps: expected an integer, got bool True"),
    (edited(match__enabled="yes"), "match.enabled: expected true or false, got str 'yes'"),
    (edited(resources__num_gpus="half"), "resources.num_gpus: expected a number, got str 'half'"),
    (edited(resources__num_cpus=0), "resources.num_cpus: must be positive, got 0"),
    (edited(methods__0__loss_weights={"att": -1}), "methods[0].loss_weights.att: must be at least 0.0, got -1"),
    (edited(tasks=["transfer", "edit"]), "tasks[1]: unknown task 'edit' (known: transfer, generate, match)"),
    (edited(limit_pairs=0), "limit_pairs: must be positive, got 0"),
    (edited(name="my suite"), "name: must be usable as a folder name"),
    (edited(manifest="../manifests/absent.parquet"), "manifest: file not found: ../manifests/absent.parquet"),
    (edited(methods=[]), "methods: must not be empty"),
    (edited(methods__1=FULL["methods"][0]), "methods[1]: same method and settings as methods[0]"),
    (edited(manifest=DELETE), "manifest: missing (required)"),
    (edited(manifests=["../manifests/more.parquet"]), "manifests: give either manifest or manifests, not both"),
    ("name: a\nname: b\n", "line 2 column 1: not valid YAML (duplicate key 'name')"),
    ("methods: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping, got list"),
    ("", "the suite file is empty"),
]


@pytest.mark.parametrize("data, expected", ERRORS, ids=[message.split(":")[0] or "root" for _, message in ERRORS])
def test_errors_are_one_line_naming_file_and_key(bench: Path, data: Any, expected: str) -> None:
    path = write(bench, data)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert isinstance(err.value, UsageError) and isinstance(err.value, ValueError)


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="nope.yaml: file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_real_clic_method_validates_learn_overrides(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real registry: learn keys are LearnConfig fields and loss_weights name real terms."""
    monkeypatch.undo()
    try:
        clic.methods.method_class("clic")
    except Exception as err:  # the method module is still being written
        pytest.skip(f"clic method not importable: {err}")
    base = {"manifest": "../manifests/synth.parquet", "metrics": ["lpips"]}
    ok = load_suite(
        write(
            bench,
            {
                **base,
                "methods": [
                    {
                        "name": "clic",
                        "presets": ["paper", "official-code"],
                        "loss_weights": {"con": 0.5},
                        "learn": {"steps": 10},
                    }
                ],
            },
        )
    )
    assert ok.methods[0].learn_overrides({"con": {"weight": 1.0, "alpha": 0.25}})["terms"]["con"] == {
        "weight": 0.5,
        "alpha": 0.25,
    }
    with pytest.raises(SuiteError, match=r"methods\[0\]\.learn\.stepz: unknown key \(did you mean 'steps'\?\)"):
        load_suite(write(bench, {**base, "methods": [{"name": "clic", "learn": {"stepz": 10}}]}))
    with pytest.raises(SuiteError, match=r"methods\[0\]\.loss_weights\.banana: unknown key"):
        load_suite(write(bench, {**base, "methods": [{"name": "clic", "loss_weights": {"banana": 1}}]}))
    with pytest.raises(SuiteError, match=r"methods\[0\]\.learn: with preset 'paper': optimizer must be"):
        load_suite(write(bench, {**base, "methods": [{"name": "clic", "learn": {"optimizer": "sgd"}}]}))
    with pytest.raises(SuiteError, match=r"methods\[0\]\.loss_weights: with preset 'paper': the objective has no term"):
        load_suite(
            write(bench, {**base, "methods": [{"name": "clic", "loss_weights": {"con": 0, "att": 0, "roi": 0}}]})
        )


def test_suite_is_frozen(bench: Path) -> None:
    suite = load_suite(write(bench, FULL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        suite.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        suite.methods[0].learn["steps"] = 1  # type: ignore[index]
    assert isinstance(suite, Suite)
