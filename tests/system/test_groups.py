"""Generation prompts, several images per generation, and group metrics over seeds and over concepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_inputs import SHIPPED_MANIFEST, make_pairs, make_suite

from clic.concept import LearnedConcept
from clic.learn import format_prompt
from harness import store
from harness.execute.runner import execute
from harness.metrics import build_metric
from harness.metrics.base import MetricSettings, Sample
from harness.metrics.esr import EDIT_PROMPTS
from harness.plan.job_graph import build_job_graph
from harness.plan.jobs import CONCEPTS, GROUP_RESULT_PREFIX, SEEDS, Pair
from harness.plan.resolve import method_tasks, plan_from_suite
from harness.plan.suite import SuiteError, suite_from_dict

RED_PROMPT = "a red {object} with {tokens} style"


def read_image(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


def generate_suite(**changes) -> dict:
    suite = {
        "name": "groups",
        "model": "tiny",
        "resolution": 64,
        "methods": [{"name": "textual_inversion", "learn": {"steps": 2}}],
        "seeds": [0, 1],
        "generate": {
            "objects": ["vase"],
            "prompts": [RED_PROMPT],
            "steps": 2,
            "stage_one_steps": 1,
            "images_per_seed": 2,
        },
        "tasks": ["generate"],
        "metrics": ["esr", "clip_text", "lpips_diversity", "concept_classification"],
        "resources": {"num_cpus": 1, "max_retries": 0},
    }
    suite.update(changes)
    return suite


def two_categories(pairs: list[Pair]) -> list[Pair]:
    return [
        dataclasses.replace(pair, category="jewelry" if i == len(pairs) - 1 else "furniture")
        for i, pair in enumerate(pairs)
    ]


def test_prompts_and_groups_in_the_job_graph(tmp_path: Path) -> None:
    pairs = two_categories(make_pairs(tmp_path, 3))  # furniture: sources 0 and 1; jewelry: source 2
    generate = {"objects": ["vase", "cup"], "prompts": "esr", "steps": 2, "stage_one_steps": 1}
    suite = make_suite(generate_suite(generate=generate))
    plan = plan_from_suite(suite, 64)
    assert [point.settings.prompt for point in plan.methods[0].resolved.generate] == list(EDIT_PROMPTS)
    graph = build_job_graph(pairs, plan, {"textual_inversion": None}, method_tasks(plan))
    assert len(graph.jobs) == 3 * 2 * 2 * len(EDIT_PROMPTS)  # sources x seeds x objects x prompts
    assert {job.settings.prompt for job in graph.jobs} == set(EDIT_PROMPTS)

    def groups(kind: str) -> dict[str, set[tuple]]:
        found: dict[str, set[tuple]] = {}
        for job in graph.jobs:
            found.setdefault(job.groups[kind], set()).add(
                (job.category, job.source_image, job.seed, job.object_word, job.settings.prompt)
            )
        return found

    # seeds: one group per source x object x prompt, holding both seeds and nothing else
    by_seeds = groups(SEEDS)
    assert len(by_seeds) == 3 * 2 * len(EDIT_PROMPTS)
    assert all(len(m) == 2 and len({(c, s, o, p) for c, s, _, o, p in m}) == 1 for m in by_seeds.values())
    # concepts: one group per prompt, holding every source (both categories), seed and object of the run
    by_concepts = groups(CONCEPTS)
    assert len(by_concepts) == len(EDIT_PROMPTS)
    assert all(len(m) == 3 * 2 * 2 for m in by_concepts.values())  # sources x seeds x objects
    assert all({c for c, _, _, _, _ in m} == {"furniture", "jewelry"} for m in by_concepts.values())


def test_generation_shorter_than_a_presets_stage_one_follows_it_and_a_given_one_is_checked() -> None:
    # textual_inversion's preset: stage one = 5 of 50 steps; unset in the suite, it follows generate.steps as that
    # share (issue 27, case 13): round(2 × 5/50) = 0
    suite = make_suite(generate_suite(generate={"steps": 2}))
    assert suite.runs[0][0].generate[0].settings.stage_one_steps == 0
    with pytest.raises(SuiteError, match=r"generate.stage_one_steps: 5 is outside \[0, 2\]") as error:
        make_suite(generate_suite(generate={"steps": 2, "stage_one_steps": 5}))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "prompts, message",
    [
        (["a photo of a {object}"], "does not name the concept"),
        (["a {colour} {object} with {tokens}"], "unknown placeholder(s) ['colour']"),
        (["a {object with {tokens}"], "is not a prompt template"),
        ("every", "generate.prompts"),
    ],
)
def test_bad_prompts_are_one_line_errors(prompts, message: str) -> None:
    with pytest.raises(SuiteError, match="generate.prompts") as error:
        suite_from_dict(
            {
                "name": "bad",
                "manifest": SHIPPED_MANIFEST,
                "methods": [{"name": "clic"}],
                "generate": {"prompts": prompts},
            },
            source="bad.yaml",
            base_dir=Path.cwd(),
        )
    assert message in str(error.value) and "\n" not in str(error.value)


def group_rows(run: Path, kind: str):
    results = store.read_results(run)
    return results[results["job_id"].str.startswith(f"{GROUP_RESULT_PREFIX}{kind}-")]


def test_group_metrics_over_seeds_and_concepts_and_every_image_scored(ray_session, tmp_path: Path) -> None:
    pairs = two_categories(make_pairs(tmp_path / "data", 3))
    run = tmp_path / "run"
    summary = execute(make_suite(generate_suite()), pairs, run, quiet=True, allow_random_metrics=True)
    assert (summary.done, summary.failed) == (6, 0)
    assert (summary.groups_scored, summary.groups_failed) == (3 + 1, 0)  # seeds: one per source; concepts: one
    results = store.read_results(run)
    jobs = results[~results["job_id"].str.startswith(GROUP_RESULT_PREFIX)]

    # Every image of a generation (two here) is scored; the job's value is the mean over its images.
    clip_text = build_metric("clip_text", MetricSettings(allow_random=True))
    for _, row in jobs[jobs["metric"] == "clip_t"].iterrows():
        folder = run / store.ARTIFACTS_DIR / row["job_id"]
        images = [read_image(folder / name) for name in ("edited.png", "edited-1.png")]
        tokens = LearnedConcept.load(run / store.CONCEPTS_DIR / row["concept_id"]).tokens
        prompt = format_prompt(RED_PROMPT, "vase", tokens)
        each = [
            v[0].value
            for v in clip_text.compute([Sample("x", "generate", output_image=image, prompt=prompt) for image in images])
        ]
        assert abs(each[0] - each[1]) > 5e-3  # the mean differs from the first image's value
        assert row["value"] == pytest.approx(np.mean(each), abs=2e-3)  # (PNG rounding)
        esr = jobs[(jobs["job_id"] == row["job_id"]) & (jobs["metric"] == "esr")]["value"].item()
        esr_metric = build_metric("esr", MetricSettings(allow_random=True))
        each_esr = [
            v[0].value
            for v in esr_metric.compute(
                [Sample("x", "generate", output_image=image, prompt=prompt, object_word="vase") for image in images]
            )
        ]
        assert esr == np.mean(each_esr)
    assert set(jobs["metric"].dropna()) == {"esr", "clip_t"}  # group values are not on any member's row

    seeds = group_rows(run, SEEDS)
    assert set(seeds["metric"]) == {"lpips_diversity"} and len(seeds) == 3
    assert (seeds["value"] > 0).all() and seeds["seed"].isna().all()
    assert sorted(seeds["pair_id"]) == sorted(pair.pair_id for pair in pairs)  # a seeds group is one source's
    concepts = group_rows(run, CONCEPTS)
    assert concepts["pair_id"].isna().all() and concepts["seed"].isna().all()
    assert not any('"object"' in settings for settings in concepts["settings"])  # pooled over objects
    assert set(concepts["category"]) == {"all"}  # the class set is every concept of the run, across categories
    pooled = concepts.set_index("metric")["value"]
    assert set(pooled.index) == {"sim_i", "sim_c", "acc1", "acc1_chance"}  # three concepts: ACC³ needs four
    assert 0.0 <= pooled["acc1"] <= 1.0 and pooled["acc1_chance"] == pytest.approx(1 / 3)
    assert set(concepts["metric_weights"]) == {"tiny-random"}

    # Lost group values (e.g. the driver died after the last job) are rescored from the artifacts alone.
    before = group_rows(run, CONCEPTS).sort_values(["job_id", "metric"])["value"].to_numpy()
    for path in store.results_dir(run).glob(f"{GROUP_RESULT_PREFIX}*.parquet"):
        path.unlink()
    again = execute(make_suite(generate_suite()), pairs, run, quiet=True, allow_random_metrics=True)
    assert (again.jobs_run, again.skipped, again.groups_scored) == (0, 6, 4)
    after = group_rows(run, CONCEPTS).sort_values(["job_id", "metric"])["value"].to_numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5)

    # More seeds: the groups gain members and their values replace the old ones (no double counting).
    more = execute(make_suite(generate_suite(seeds=[0, 1, 2])), pairs, run, quiet=True, allow_random_metrics=True)
    assert (more.done, more.skipped, more.groups_scored) == (3, 6, 4)
    assert len(group_rows(run, SEEDS)) == 3 and len(group_rows(run, CONCEPTS)) == 4

    # A group that cannot be scored (a member's images are unreadable) is one failed row; its members keep theirs.
    # (A deleted image is redone by the next run instead: tests/system/test_hostile_inputs.py.)
    for path in store.results_dir(run).glob(f"{GROUP_RESULT_PREFIX}{SEEDS}-*.parquet"):
        path.unlink()
    member = jobs["job_id"].iloc[0]
    for image in (run / store.ARTIFACTS_DIR / member).glob("edited*.png"):
        image.write_bytes(b"not a PNG any more")
    broken = execute(make_suite(generate_suite(seeds=[0, 1, 2])), pairs, run, quiet=True, allow_random_metrics=True)
    assert (broken.jobs_run, broken.groups_scored, broken.groups_failed) == (0, 2, 1)
    failed = group_rows(run, SEEDS).query("status == 'failed'")
    assert len(failed) == 1 and "\n" not in failed["error"].item()
    assert failed["error"].item().startswith("group metric: ") and member in failed["error"].item()
    assert (store.read_results(run).query("job_id == @member")["status"] == "ok").all()
