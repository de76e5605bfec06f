"""Identity is decided once, at plan time: each method run's label and variant, carried by its jobs."""

from __future__ import annotations

from pathlib import Path

from run_inputs import make_pairs

from harness.plan.identity import method_label, variant_name, with_labels
from harness.plan.job_graph import build_job_graph
from harness.plan.jobs import MethodRun
from harness.plan.resolve import method_tasks, plan_from_suite
from harness.plan.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]


def test_the_ablation_suite_plans_its_variant_labels_in_suite_order() -> None:
    plan = plan_from_suite(load_suite(ROOT / "benchmarks" / "ablations.yaml"), 64)
    assert [run.label for run in plan.methods] == [
        "clic/paper",
        "clic/paper no_att",
        "clic/paper no_roi",
        "clic/paper no_con",
        "clic/official-code",
    ]
    assert [run.variant for run in plan.methods][:2] == ["", "no_att"]


def test_jobs_carry_their_run_label_and_ordinary_runs_have_no_variant(tmp_path: Path) -> None:
    runs = with_labels([MethodRun("clic", "paper", {"steps": 3}), MethodRun("cut_paste", "default")])
    assert [(run.label, run.variant) for run in runs] == [("clic/paper", ""), ("cut_paste/default", "")]
    smoke = plan_from_suite(load_suite(ROOT / "benchmarks" / "smoke.yaml"), 64)
    graph = build_job_graph(make_pairs(tmp_path, 1), smoke, {"clic": None, "cut_paste": None}, method_tasks(smoke))
    assert {(job.method, job.label, job.variant) for job in graph.jobs} == {
        ("clic", "clic/paper", ""),
        ("cut_paste", "cut_paste/default", ""),
    }


def test_variant_names_say_what_sets_an_entry_apart() -> None:
    common = {"steps": 30, "terms": {"con": 1.0}}
    assert variant_name({"steps": 30, "terms": {"con": 1.0, "att": 0}}, common) == "no_att"
    assert variant_name({"steps": 10, "terms": {"con": 1.0}}, common) == "steps=10"
    assert variant_name({"steps": 30, "terms": {"con": {"weight": 0.0, "alpha": 0.5}}}, common) == "no_con"
    assert method_label("clic", "paper", "no_att") == "clic/paper no_att" and method_label("x", None) == "x"


def custom_term_suite(tmp_path: Path, needs: object = None) -> dict:
    spec = {"weight": 0.1, "fn": "toy_terms:extra", **({"needs": needs} if needs is not None else {})}
    return {
        "name": "fn",
        "manifest": str(ROOT / "manifests" / "furniture" / "manifest.parquet"),
        "model": "tiny",
        "methods": [{"name": "clic", "presets": ["paper"], "learn": {"steps": 3, "terms": {"extra": spec}}}],
        "tasks": ["transfer"],
        "transfer": {"t_start": [3], "steps": 5},
        "metrics": ["ssim_psnr"],
    }


def test_editing_a_custom_loss_term_changes_the_concept_id(tmp_path: Path, monkeypatch) -> None:
    from harness.plan.suite import suite_from_dict

    module = tmp_path / "toy_terms.py"
    module.write_text("def extra(step):\n    return step.noise.pow(2).mean()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pairs = make_pairs(tmp_path / "data", 1)

    def concept_ids() -> set[str]:
        plan = plan_from_suite(suite_from_dict(custom_term_suite(tmp_path), source="fn", base_dir=tmp_path), 64)
        return set(build_job_graph(pairs, plan, {"clic": None}, method_tasks(plan)).learns)

    before = concept_ids()
    assert concept_ids() == before  # nothing edited: the same concept (a rerun skips it)
    module.write_text("def extra(step):\n    return 2 * step.noise.pow(2).mean()\n")
    assert concept_ids().isdisjoint(before)  # the term's source changed: learn again


def test_an_unknown_needs_of_a_loss_term_is_a_suite_error(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from harness.plan.suite import SuiteError, suite_from_dict

    (tmp_path / "toy_terms.py").write_text("def extra(step):\n    return step.noise.pow(2).mean()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SuiteError, match=r"methods\[0\]\.learn.*unknown needs \['contxt'\]"):
        suite_from_dict(custom_term_suite(tmp_path, needs=["contxt"]), source="fn", base_dir=tmp_path)
    suite_from_dict(custom_term_suite(tmp_path, needs=["context", "attention"]), source="fn", base_dir=tmp_path)


def test_a_metric_option_that_changes_the_numbers_changes_the_job_ids(tmp_path: Path) -> None:
    """clip.model or lpips.net chooses another network: a folder rerun with it must score again, never resume
    the other network's values. batch_size only changes speed; a suite without options keeps its old ids."""
    from harness.plan.suite import suite_from_dict

    pairs = make_pairs(tmp_path / "data", 1)
    base = {
        "name": "options",
        "manifest": str(ROOT / "manifests" / "furniture" / "manifest.parquet"),
        "methods": [{"name": "cut_paste"}],
        "tasks": ["transfer"],
        "metrics": ["clip_image", "lpips", "ssim_psnr"],
    }

    def job_ids(options: dict | None) -> list[str]:
        data = {**base, **({"metric_options": options} if options is not None else {})}
        plan = plan_from_suite(suite_from_dict(data, source=str(tmp_path / "suite.yaml")), 64)
        return sorted(job.job_id for job in build_job_graph(pairs, plan, {"cut_paste": None}, method_tasks(plan)).jobs)

    plain = job_ids(None)
    assert job_ids({"clip": {"batch_size": 4}, "lpips": {"batch_size": 2}}) == plain
    other_clip = job_ids({"clip": {"model": "RN50"}})
    other_lpips = job_ids({"lpips": {"net": "tiny-world"}})
    assert len({tuple(plain), tuple(other_clip), tuple(other_lpips)}) == 3
    # no options: a job id records each metric as the [name, version] pair it always did, so old folders resume
    plan = plan_from_suite(suite_from_dict(base, source=str(tmp_path / "suite.yaml")), 64)
    assert [m.identity() for m in plan.metrics] == [[m.name, m.version] for m in plan.metrics]
