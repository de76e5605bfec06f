"""Identity is decided once, at plan time: each method run's label and variant, carried by its jobs."""
from __future__ import annotations

from pathlib import Path

from harness.plan.identity import method_label, variant_name, with_labels
from harness.plan.jobs import MethodRun, build_job_graph
from harness.plan.resolve import method_tasks, plan_from_suite
from harness.plan.suite import load_suite
from test_runner import make_pairs

ROOT = Path(__file__).resolve().parent.parent


def test_the_ablation_suite_plans_its_variant_labels_in_suite_order() -> None:
    plan = plan_from_suite(load_suite(ROOT / "benchmarks" / "ablations.yaml"), 64)
    assert [run.label for run in plan.methods] == ["clic/paper", "clic/paper no_att", "clic/paper no_roi",
                                                   "clic/paper no_con", "clic/official-code"]
    assert [run.variant for run in plan.methods][:2] == ["", "no_att"]


def test_jobs_carry_their_run_label_and_ordinary_runs_have_no_variant(tmp_path: Path) -> None:
    runs = with_labels([MethodRun("clic", "paper", {"steps": 3}), MethodRun("cut_paste", "default")])
    assert [(run.label, run.variant) for run in runs] == [("clic/paper", ""), ("cut_paste/default", "")]
    smoke = plan_from_suite(load_suite(ROOT / "benchmarks" / "smoke.yaml"), 64)
    graph = build_job_graph(make_pairs(tmp_path, 1), smoke, {"clic": None, "cut_paste": None}, method_tasks(smoke))
    assert {(job.method, job.label, job.variant) for job in graph.jobs} == {
        ("clic", "clic/paper", ""), ("cut_paste", "cut_paste/default", "")}


def test_variant_names_say_what_sets_an_entry_apart() -> None:
    common = {"steps": 30, "terms": {"con": 1.0}}
    assert variant_name({"steps": 30, "terms": {"con": 1.0, "att": 0}}, common) == "no_att"
    assert variant_name({"steps": 10, "terms": {"con": 1.0}}, common) == "steps=10"
    assert variant_name({"steps": 30, "terms": {"con": {"weight": 0.0, "alpha": 0.5}}}, common) == "no_con"
    assert method_label("clic", "paper", "no_att") == "clic/paper no_att" and method_label("x", None) == "x"
