"""Every number says what made it: settings resolved once (``Method.resolve``) and recorded in every row, sweeps
as variants of their own, the folder's own plan in its tables, honest intervals, random weights labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from run_inputs import SHIPPED_MANIFEST, make_pairs

from harness import store
from harness.analyse.aggregate import summary_table
from harness.analyse.bootstrap import bootstrap_ci, holm
from harness.analyse.paired import paired_differences
from harness.analyse.report import write_report
from harness.execute.records import settings_columns
from harness.execute.runner import execute, exit_status, summary_lines
from harness.plan.job_graph import build_job_graph
from harness.plan.preflight import device_problems, other_suite_problems
from harness.plan.resolve import describe_models, method_tasks, plan_from_suite
from harness.plan.suite import SuiteError, suite_from_dict

ROOT = Path(__file__).resolve().parents[2]


def suite(data: dict, source: str = "suite") -> object:
    return suite_from_dict(
        {"name": "t", "manifests": [SHIPPED_MANIFEST], "model": "tiny", **data}, source=source, base_dir=Path.cwd()
    )


def graph_of(checked, pairs):
    models, resolution = describe_models(checked)
    plan = plan_from_suite(checked, checked.resolution or resolution)
    return plan, build_job_graph(pairs, plan, models, method_tasks(plan))


# ------------------------------------------------------------------------------------- resolve once
def test_the_plan_carries_the_objects_the_suite_reader_resolved(tmp_path: Path) -> None:
    """The suite reader resolves each method run once; the plan, the learn nodes and the task jobs carry those
    very objects (not re-merged), and the method hands an already resolved object back unchanged."""
    from clic.methods.base import get_method
    from clic.transfer import TransferSettings

    checked = suite(
        {
            "methods": [{"name": "clic", "presets": ["paper"], "learn": {"steps": 3}}],
            "transfer": {"t_start": [2], "eta": [0.5], "steps": 6},
            "metrics": ["ssim_psnr"],
        }
    )
    resolved = checked.runs[0][0]
    plan, graph = graph_of(checked, make_pairs(tmp_path, 1))
    assert plan.methods[0].resolved is resolved
    node = next(iter(graph.learns.values()))
    assert node.learn is resolved.learn and node.learn.steps == 3
    job = graph.jobs[0]
    assert isinstance(job.settings, TransferSettings) and job.settings is resolved.transfer[0].settings
    assert (job.settings.t_start, job.settings.eta, job.settings.steps) == (2, 0.5, 6)
    method = get_method("clic")
    assert method.resolve("transfer", "paper", job.settings) is job.settings
    assert (
        method.resolve("transfer", "paper", {"t_start": 2, "eta": 0.5, "steps": 6, "guidance_scale": 7.5})
        == job.settings
    )


def test_a_preset_supplied_t_start_is_in_every_row(tmp_path: Path) -> None:
    """The suite leaves t_start and eta to the presets: the rows still say what ran (released code: t_start 15,
    reproduce.sh L35; DDIM eta 1.0, transfer.py L85 — the preset's declared values; the paper: t_start 10)."""
    checked = suite(
        {
            "methods": [{"name": "clic", "presets": ["paper", "official-code"]}],
            "transfer": {"steps": 50},
            "metrics": ["ssim_psnr"],
        }
    )
    _, graph = graph_of(checked, make_pairs(tmp_path, 1))
    by_preset = {job.preset: settings_columns(job) for job in graph.jobs}
    assert by_preset["official-code"]["t_start"] == 15 and by_preset["paper"]["t_start"] == 10
    for columns in by_preset.values():
        assert columns["eta"] is not None and columns["task_steps"] == 50 and columns["learn_steps"] == 500
        recorded = json.loads(columns["settings"])
        assert recorded["transfer"]["t_start"] == columns["t_start"] and recorded["learn"]["steps"] == 500


def test_a_sweep_is_one_variant_per_value_and_seeds_are_not(tmp_path: Path) -> None:
    checked = suite(
        {
            "methods": [{"name": "clic", "presets": ["paper"]}, {"name": "cut_paste"}],
            "seeds": [0, 1],
            "transfer": {"t_start": [1, 4], "steps": 6},
            "metrics": ["ssim_psnr"],
        }
    )
    _, graph = graph_of(checked, make_pairs(tmp_path, 2))
    labels = sorted({job.label for job in graph.jobs})
    assert labels == ["clic/paper t_start=1", "clic/paper t_start=4", "cut_paste/default"]
    clic_jobs = [job for job in graph.jobs if job.method == "clic"]
    assert len(clic_jobs) == 2 * 2 * 2 and {job.sweep["t_start"] for job in clic_jobs} == {1, 4}
    paste = [job for job in graph.jobs if job.method == "cut_paste"]
    assert len(paste) == 2 * 2 and all(job.settings is None and job.sweep is None for job in paste)


def test_the_cli_resolves_through_the_same_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clic import cli

    assert (
        cli.main(
            [
                "learn",
                "--image",
                "x.png",
                "--mask",
                "m.png",
                "--object",
                "chair",
                "--preset",
                "paper",
                "--steps",
                "0",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
    assert "clic: error: --steps: must be positive" in capsys.readouterr().err
    from clic import cli_task_inputs

    with pytest.raises(cli.OptionError, match=r"--t-start: must lie in \[1, 19\]"):
        cli_task_inputs.resolve_settings(
            cli_task_inputs.method_named("clic"), "transfer", "paper", {"t_start": 25, "steps": 20}
        )


# -------------------------------------------------------------------------------- metric options
@pytest.mark.parametrize(
    "options, expected",
    [
        ({"lpips": {"net": "vgg"}}, "metric_options.lpips.net: 'vgg' is not the LPIPS trunk"),
        (
            {"clip": {"modle": "ViT-L-14"}},
            "metric_options.clip.modle: unknown option 'modle' of clip (known: batch_size, "
            "cache_dir, model, pretrained); did you mean 'model'?",
        ),
        ({"clip": {"model": "ViT-L-15"}}, "metric_options.clip.model: 'ViT-L-15' is not an open_clip architecture"),
        ({"clip": {"batch_size": 0}}, "metric_options.clip.batch_size: must be at least 1"),
        ({"clip_image": {"model": "ViT-B-32"}}, "options of 'clip_image' go under its model family: clip"),
    ],
)
def test_metric_options_are_declared(options: dict, expected: str) -> None:
    with pytest.raises(SuiteError) as error:
        suite({"methods": [{"name": "cut_paste"}], "metrics": ["lpips", "clip_image"], "metric_options": options})
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_declared_options_are_accepted() -> None:
    checked = suite(
        {
            "methods": [{"name": "cut_paste"}],
            "metrics": ["lpips", "clip_image"],
            "metric_options": {"clip": {"model": "ViT-L-14", "batch_size": 8}, "lpips": {"net": "alex"}},
        }
    )
    assert checked.metric_options["clip"]["model"] == "ViT-L-14"


# ------------------------------------------------------------------------------------- preflight
def test_a_cuda_device_without_a_gpu_is_refused_before_ray() -> None:
    checked = suite({"methods": [{"name": "cut_paste"}], "metrics": ["ssim_psnr"], "device": "cuda"})
    assert "needs resources.num_gpus > 0" in device_problems(checked)[0]
    gpu = suite(
        {"methods": [{"name": "cut_paste"}], "metrics": ["ssim_psnr"], "device": "cuda", "resources": {"num_gpus": 1}}
    )
    assert "no visible CUDA GPU" in device_problems(gpu, cuda_available=False)[0]
    assert device_problems(gpu, cuda_available=True) == []


def test_another_suite_into_a_folder_is_refused(tmp_path: Path) -> None:
    store.write_run_record(tmp_path, {"suite": {"name": "smoke"}})
    assert other_suite_problems(tmp_path, "smoke") == []
    problem = other_suite_problems(tmp_path, "baselines")[0]
    assert "holds results of suite 'smoke', not 'baselines'" in problem and "--allow-other-suite" in problem


# ----------------------------------------------------------------------------------- intervals
def _rows(values: dict[tuple[str, int], float], method: str = "clic") -> list[dict]:
    return [
        {
            "job_id": f"{method}-{pair}-{seed}",
            "pair_id": pair,
            "seed": seed,
            "task": "transfer",
            "object_word": "chair",
            "category": "furniture",
            "method": method,
            "preset": "paper",
            "metric": "m",
            "value": value,
            "status": "ok",
            "weights_label": "tiny-random",
            "metric_weights": "none",
        }
        for (pair, seed), value in values.items()
    ]


def test_pairs_are_resampled_with_their_seeds_nested() -> None:
    """The nested bootstrap written out: draw pairs with replacement, then each drawn pair's seeds with
    replacement; the percentile interval of the resampled means."""
    values = {
        ("a", 0): 0.1,
        ("a", 1): 0.3,
        ("b", 0): 0.5,
        ("b", 1): 0.9,
        ("c", 0): 0.2,
        ("c", 1): 0.4,
        ("d", 0): 0.8,
        ("d", 1): 0.6,
    }
    pairs = sorted({p for p, _ in values})
    by_pair = {p: np.array([v for (q, _), v in values.items() if q == p]) for p in pairs}
    rng = np.random.default_rng(0)  # the seeded stream: every pair draw of the 2000 resamples, then every seed draw
    drawn_pairs = rng.integers(0, len(pairs), size=(2000, len(pairs)))
    uniforms = rng.random((2000, len(pairs), 2))
    means = []
    for drawn, u in zip(drawn_pairs, uniforms):
        resample = [
            by_pair[pairs[i]][int(np.floor(u[k, j] * len(by_pair[pairs[i]])))]
            for k, i in enumerate(drawn)
            for j in range(len(by_pair[pairs[i]]))
        ]
        means.append(np.mean(resample))
    expected = tuple(np.percentile(means, [2.5, 97.5]))
    flat = [v for (_, _), v in sorted(values.items())]
    clusters = [p for (p, _), _ in sorted(values.items())]
    assert bootstrap_ci(flat, clusters=clusters, nested=True) == pytest.approx(expected)
    table = summary_table(pd.DataFrame(_rows(values)), by=("method", "preset", "category", "metric"))
    row = table[table["category"].eq("furniture")].iloc[0]
    assert (row["n"], row["n_pairs"]) == (8, 4) and (row["ci_low"], row["ci_high"]) == pytest.approx(expected)


def test_no_interval_and_no_star_below_three_pairs() -> None:
    from harness.analyse.headline import headline

    two_pairs = {("a", 0): 0.1, ("a", 1): 0.3, ("b", 0): 0.5, ("b", 1): 0.9}
    rows = _rows(two_pairs) + _rows({key: v + 0.5 for key, v in two_pairs.items()}, method="realfill")
    summary = summary_table(pd.DataFrame(rows), by=("method", "preset", "category", "metric"))
    assert summary["ci_low"].isna().all() and set(summary["n"]) == {4}
    head = headline(summary, {"m": True})
    assert not any(cell.best for cell in head.cells.values())
    assert all("[" not in cell.text() for cell in head.cells.values())
    paired = paired_differences(pd.DataFrame(rows))
    assert paired["test"].eq("none").all() and paired["ci_low"].isna().all()


def test_holm_by_hand_and_in_the_paired_table() -> None:
    # Holm: sorted p (0.01, 0.02, 0.04) × (3, 2, 1) = (0.03, 0.04, 0.04), monotone, in the original order.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    rng = np.random.default_rng(1)
    rows = []
    for metric, shift in (("m", 0.2), ("n", 0.0)):
        base = {(f"p{i}", 0): float(v) for i, v in enumerate(rng.uniform(0, 1, 8))}
        for method, offset in (("clic", 0.0), ("realfill", shift)):
            rows += [
                {**row, "metric": metric, "job_id": f"{row['job_id']}-{metric}"}
                for row in _rows({k: v + offset + rng.normal(0, 0.01) for k, v in base.items()}, method)
            ]
    paired = paired_differences(pd.DataFrame(rows)).set_index("metric")
    expected = holm(paired["p_value"].to_numpy())
    assert paired["p_holm"].to_numpy() == pytest.approx(expected)
    assert (paired["p_holm"] >= paired["p_value"]).all()


# ------------------------------------------------------------------------------------ end to end
def test_sweep_plan_scope_and_random_weights_end_to_end(ray_session, tmp_path: Path) -> None:
    """A saved tiny folder as the model: rows, tables and banner say tiny-random. t_start [1, 4] × 2 seeds × 3
    pairs: two headline rows for CLiC, each n = pairs × seeds. The suite edited and run into its own folder:
    only the new plan's jobs are in the tables, and the report says how many earlier rows it left out."""
    from clic.models import save_tiny

    model = save_tiny(tmp_path / "tiny-folder")
    pairs = make_pairs(tmp_path / "data", 3)
    data = {
        "name": "sweep",
        "model": str(model),
        "seeds": [0, 1],
        "metrics": ["ssim_psnr"],
        "methods": [{"name": "clic", "presets": ["paper"], "learn": {"steps": 2}}, {"name": "cut_paste"}],
        "transfer": {"t_start": [1, 4], "steps": 5},
        "tasks": ["transfer"],
        "resources": {"num_cpus": 1},
    }
    run = tmp_path / "run"
    first = execute(suite(data), pairs, run, quiet=True)
    assert first.failed == 0
    rows = store.read_results(run)
    clic_rows = rows[rows["method"].eq("clic")]
    assert set(clic_rows["weights_label"]) == {"tiny-random"} and clic_rows["t_start"].notna().all()
    assert set(clic_rows["label"]) == {"clic/paper t_start=1", "clic/paper t_start=4"}
    write_report(run)
    summary = pd.read_csv(run / "report" / "tables" / "summary.csv")
    overall = summary[summary["category"].eq("all") & summary["metric"].eq("psnr_outside")].set_index("preset")
    assert set(overall.index) == {"paper t_start=1", "paper t_start=4", "default"}
    assert overall.loc["paper t_start=1", "n"] == 3 * 2 and overall.loc["paper t_start=1", "n_pairs"] == 3
    markdown = (run / "report" / "summary.md").read_text()
    assert "| clic/paper t_start=1 |" in markdown and "| clic/paper t_start=4 |" in markdown
    assert "†" in markdown and "random-weight models" in markdown

    edited = {**data, "methods": [{"name": "clic", "presets": ["paper"], "learn": {"steps": 3}}, {"name": "cut_paste"}]}
    second = execute(suite(edited), pairs, run, quiet=True)
    assert second.done == 12 and second.skipped == 6  # CLiC's jobs are new; cut-and-paste's are the same jobs
    write_report(run)
    summary = pd.read_csv(run / "report" / "tables" / "summary.csv")
    overall = summary[summary["category"].eq("all") & summary["metric"].eq("psnr_outside")].set_index("preset")
    assert overall.loc["paper t_start=1", "n"] == 6, "the first plan's CLiC rows are not pooled with the second's"
    earlier_rows = int(clic_rows.shape[0])
    assert (
        f"{earlier_rows} result row(s) from an earlier plan of this folder are not in these tables"
        in (run / "report" / "summary.md").read_text()
    )


def test_a_rerun_says_failures_are_still_there(ray_session, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "data", 2)
    data = {
        "name": "fails",
        "methods": [{"name": "fault_injection", "presets": ["nan-loss"]}],
        "metrics": ["ssim_psnr"],
        "tasks": ["transfer"],
        "transfer": {"steps": 20},
    }
    run = tmp_path / "run"
    first = execute(suite(data), pairs, run, quiet=True)
    assert first.failed == 2 and exit_status(first) == 1
    again = execute(suite(data), pairs, run, quiet=True)  # e.g. after a fix that does not change the job ids
    assert (again.done, again.failed, again.skipped, again.failed_earlier) == (0, 0, 2, 2)
    assert exit_status(again) == 1
    assert summary_lines(again)[-1].startswith("2 failed earlier") and "--retry-failed" in summary_lines(again)[-1]
