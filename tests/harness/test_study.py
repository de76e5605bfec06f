"""User-study packs and their scoring: blinding, per-rater orders, stratification, checks, the numbers."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from harness import store
from harness.analyse.report import write_report
from harness.analyse.study import BROKEN, build_pack
from harness.analyse.study_scores import cluster_bootstrap_ci, kendalls_w, read_answers, score_main, score_study
from harness.errors import UsageError
from harness.plan.identity import with_labels
from harness.plan.jobs import MethodRun

SIZE = 48
METHODS = (("clic", "paper"), ("custom_diffusion", "default"), ("break_a_scene", "default"), ("realfill", "default"))
# Unequal strata: a plain random sample of 6 would mostly draw furniture.
CATEGORIES = {"furniture": 6, "jewelry": 2, "building": 3}


def _draw(path: Path, colour: tuple[int, int, int], box: tuple[int, int, int, int], background: int = 230) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (SIZE, SIZE), (background,) * 3)
    ImageDraw.Draw(image).rectangle(box, fill=colour)
    image.save(path)
    return path.name


def _mask(path: Path, box: tuple[int, int, int, int]) -> str:
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    mask.save(path)
    return path.name


def make_fake_run(
    root: Path, categories: dict[str, int] = CATEGORIES, methods=METHODS, learn=None, suite_methods=None
) -> Path:
    """A finished run: a manifest of drawn pairs and one transfer output per method and pair, plus metrics.

    `learn` gives each entry of `methods` its learning overrides (recorded in `settings`, as the runner does).
    """
    data, run_dir = root / "data", root / "run"
    box = (12, 12, 36, 36)
    rows, index = [], 0
    for category, count in categories.items():
        for _ in range(count):
            pair_id = f"{category[:3]}{index}"
            rows.append(
                {
                    "pair_id": pair_id,
                    "category": category,
                    "source_object": "chair",
                    "target_object": "chair",
                    "source_image": _draw(data / f"{pair_id}-src.png", (40, 120, 200), box),
                    "source_mask": _mask(data / f"{pair_id}-src-mask.png", box),
                    "target_image": _draw(data / f"{pair_id}-tgt.png", (200, 90, 40), box),
                    "target_mask": _mask(data / f"{pair_id}-tgt-mask.png", box),
                }
            )
            index += 1
    pd.DataFrame(rows).to_parquet(data / "manifest.parquet")
    store.write_pairs(
        run_dir, [{k: str(data / v) if k.endswith(("image", "mask")) else v for k, v in row.items()} for row in rows]
    )  # resolved paths, as the runner records them
    # The plan names each method run once (label and variant), in suite order, as the runner records it.
    runs = with_labels(
        [MethodRun(method, preset, (learn[m] if learn else None) or {}) for m, (method, preset) in enumerate(methods)]
    )
    store.write_run_record(
        run_dir,
        {
            "suite": {"name": "fake", "methods": suite_methods or []},
            "plan": {
                "methods": [
                    {"label": r.label, "method": r.name, "preset": r.preset, "variant": r.variant} for r in runs
                ]
            },
        },
    )
    for m, (method, preset) in enumerate(methods):
        settings = {"t_start": 10, **({"learn": learn[m]} if learn and learn[m] else {})}
        for row_index, row in enumerate(rows):
            job_id = f"{method}-{preset}-{m}-{row['pair_id']}"
            artifacts = run_dir / "artifacts" / job_id
            _draw(artifacts / "edited.png", (60 * m % 255, 160, 60 + 40 * m), box, background=200)
            _draw(artifacts / "attention.png", (255, 255, 255), (14, 14, 34, 34), background=0)
            base = {
                "run_id": "fake",
                "job_id": job_id,
                "task": "transfer",
                "pair_id": row["pair_id"],
                "category": row["category"],
                "method": method,
                "preset": preset,
                "seed": 0,
                "label": runs[m].label,
                "variant": runs[m].variant,
                "settings": json.dumps(settings),
                "t_start": 10,
                "status": "ok",
                "weights_label": "tiny-random",
                "metric_weights": "tiny-random",
                "model_id": "tiny",
                "artifact_image": f"artifacts/{job_id}/edited.png",
                "artifact_attention": f"artifacts/{job_id}/attention.png",
            }
            value = 0.5 + 0.1 * m + 0.01 * (row_index * (m + 1) % 7)  # paired differences vary
            store.write_job_results(run_dir, job_id, [{**base, "metric": "ssim_outside", "value": value}])
    return run_dir


def page_data(index: Path) -> dict:
    text = index.read_text()
    return json.loads(re.search(r'<script type="application/json" id="pack-data">(.*?)</script>', text, re.S).group(1))


@pytest.fixture()
def pack(tmp_path: Path) -> tuple[Path, Path, Path]:
    run_dir = make_fake_run(tmp_path)
    index, key = build_pack(run_dir, tmp_path / "pack", n_pairs=6, n_raters=3, seed=7)
    return run_dir, index, key


def test_key_is_outside_the_pack_and_the_pack_is_blind(pack: tuple[Path, Path, Path]) -> None:
    run_dir, index, key_path = pack
    pack_dir = index.parent
    assert key_path.is_file() and pack_dir not in key_path.parents
    key = json.loads(key_path.read_text())
    files = [p for p in pack_dir.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".html", ".png"}
    page = index.read_text()
    leaks = [m for m, _ in METHODS] + [q["pair_id"] for q in key["questions"].values()] + ["ssim", "job"]
    assert not [word for word in leaks if re.search(rf"\b{word}\b", page)], "the page names no method, pair or job"
    assert not [p for p in files if any(m in p.name for m, _ in METHODS)]
    # Every image the page shows is in the folder: it works from disk.
    data = page_data(index)
    shown = [q[role] for q in data["questions"].values() for role in ("source", "target")]
    shown += [src for q in data["questions"].values() for src in q["options"].values()]
    assert all((pack_dir / src).is_file() for src in shown)


def test_orders_differ_per_rater(pack: tuple[Path, Path, Path]) -> None:
    data = page_data(pack[1])
    orders = {
        rater: [(e["question"], tuple(e["options"])) for e in entries] for rater, entries in data["raters"].items()
    }
    assert len(orders) == 3
    for rater, order in orders.items():
        assert sorted(q for q, _ in order) == sorted(data["questions"]), f"{rater} sees every question once"
        assert all(set(opts) == set(data["questions"][q]["options"]) for q, opts in order)
    assert len({tuple(order) for order in orders.values()}) == 3
    option_orders = [[dict(orders[r])[q] for r in orders] for q in data["questions"]]
    assert sum(len(set(per_rater)) > 1 for per_rater in option_orders) >= len(option_orders) - 1


def test_pairs_are_stratified_by_category(pack: tuple[Path, Path, Path]) -> None:
    key = json.loads(pack[2].read_text())
    scored = [q for q in key["questions"].values() if not q["check"]]
    assert Counter(q["category"] for q in scored) == {"furniture": 2, "jewelry": 2, "building": 2}
    assert len({q["pair_id"] for q in scored}) == 6


def test_attention_checks_have_one_broken_option(pack: tuple[Path, Path, Path]) -> None:
    _, index, key_path = pack
    key = json.loads(key_path.read_text())
    checks = {qid: q for qid, q in key["questions"].items() if q["check"]}
    assert len(checks) == 1
    scored_pairs = {q["pair_id"] for q in key["questions"].values() if not q["check"]}
    for question in checks.values():
        assert list(question["options"].values()).count(BROKEN) == 1 and len(question["options"]) == len(METHODS)
        assert question["pair_id"] not in scored_pairs, "a check does not repeat a scored pair"
        token = next(t for t, m in question["options"].items() if m == BROKEN)
        pixels = np.asarray(Image.open(index.parent / "images" / f"{token}.png"))
        assert pixels.std() == 0, "the broken option is a flat image"
    for question in key["questions"].values():
        if not question["check"]:
            assert sorted(question["options"].values()) == sorted(f"{m}/{p}" for m, p in METHODS)


def test_pack_refuses_unknown_or_ambiguous_methods(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path, {"furniture": 2}, METHODS + (("clic", "official-code"),))
    with pytest.raises(UsageError, match="'clic' is ambiguous"):
        build_pack(run_dir, tmp_path / "pack", methods=["clic", "realfill"])
    with pytest.raises(UsageError, match="'dreambooth' is not in the run"):
        build_pack(run_dir, tmp_path / "pack", methods=["dreambooth", "realfill"])
    _, key = build_pack(run_dir, tmp_path / "pack", methods=["clic/official-code", "realfill"])
    assert json.loads(key.read_text())["methods"] == ["clic/official-code", "realfill/default"]


# ---------------------------------------------------------------------------------------------- scoring
# A hand-made key: methods A, B, C; q1 (category x), q2 (category y) scored; q3 an attention check.
HAND_KEY = {
    "pack_id": "hand",
    "methods": ["A", "B", "C"],
    "criteria": ["quality", "preservation"],
    "tiny_random": False,
    "questions": {
        "q1": {"pair_id": "p1", "category": "x", "check": False, "options": {"a1": "A", "b1": "B", "c1": "C"}},
        "q2": {"pair_id": "p2", "category": "y", "check": False, "options": {"a2": "A", "b2": "B", "c2": "C"}},
        "q3": {"pair_id": "p3", "category": "x", "check": True, "options": {"a3": "A", "b3": "B", "k3": BROKEN}},
    },
}
# Rankings best -> worst per (question, criterion).
HAND_ANSWERS = {
    "r1": {
        ("q1", "quality"): ["a1", "b1", "c1"],
        ("q1", "preservation"): ["b1", "a1", "c1"],
        ("q2", "quality"): ["a2", "c2", "b2"],
        ("q2", "preservation"): ["a2", "b2", "c2"],
        ("q3", "quality"): ["a3", "b3", "k3"],
        ("q3", "preservation"): ["b3", "a3", "k3"],
    },
    "r2": {
        ("q1", "quality"): ["b1", "a1", "c1"],
        ("q1", "preservation"): ["a1", "b1", "c1"],
        ("q2", "quality"): ["a2", "b2", "c2"],
        ("q2", "preservation"): ["c2", "a2", "b2"],
        ("q3", "quality"): ["a3", "b3", "k3"],
        ("q3", "preservation"): ["a3", "b3", "k3"],
    },
    # r3 puts the broken image first once: excluded, however it ranked the rest.
    "r3": {
        ("q1", "quality"): ["c1", "b1", "a1"],
        ("q1", "preservation"): ["c1", "b1", "a1"],
        ("q2", "quality"): ["c2", "b2", "a2"],
        ("q2", "preservation"): ["c2", "b2", "a2"],
        ("q3", "quality"): ["k3", "a3", "b3"],
        ("q3", "preservation"): ["a3", "b3", "k3"],
    },
}


def write_answers(folder: Path, answers: dict = HAND_ANSWERS, pack_id: str = "hand") -> list[Path]:
    paths = []
    for rater, given in answers.items():
        path = folder / f"answers-{rater}.json"
        path.write_text(
            json.dumps(
                {
                    "pack_id": pack_id,
                    "rater": rater,
                    "answers": [
                        {"question": q, "criterion": c, "ranking": ranking} for (q, c), ranking in given.items()
                    ],
                }
            )
        )
        paths.append(path)
    return paths


def test_average_ranking_matches_a_hand_computation(tmp_path: Path) -> None:
    result = score_study(HAND_KEY, read_answers(write_answers(tmp_path), HAND_KEY))
    table = result.rankings.set_index(["criterion", "category", "method"])
    # Score = 3 + 1 - place. r1: A 3,2,3,3  B 2,3,1,2  C 1,1,2,1;  r2: A 2,3,3,2  B 3,2,2,1  C 1,1,1,3.
    assert table.loc[("all", "all", "A"), "mean"] == pytest.approx(21 / 8)
    assert table.loc[("all", "all", "B"), "mean"] == pytest.approx(16 / 8)
    assert table.loc[("all", "all", "C"), "mean"] == pytest.approx(11 / 8)
    assert table.loc[("all", "all", "A"), "n"] == 8
    assert table.loc[("quality", "all", "A"), "mean"] == pytest.approx((3 + 3 + 2 + 3) / 4)
    assert table.loc[("preservation", "all", "C"), "mean"] == pytest.approx((1 + 1 + 1 + 3) / 4)
    assert table.loc[("all", "x", "A"), "mean"] == pytest.approx((3 + 2 + 2 + 3) / 4)
    assert table.loc[("all", "y", "B"), "mean"] == pytest.approx((1 + 2 + 2 + 1) / 4)
    low, high = table.loc[("all", "all", "A"), ["ci_low", "ci_high"]]
    assert low <= 21 / 8 <= high


def test_attention_check_failures_are_excluded_and_counted(tmp_path: Path) -> None:
    result = score_study(HAND_KEY, read_answers(write_answers(tmp_path), HAND_KEY))
    raters = result.raters.set_index("rater")
    assert raters["checks_answered"].to_dict() == {"r1": 2, "r2": 2, "r3": 2}
    assert raters["checks_failed"].to_dict() == {"r1": 0, "r2": 0, "r3": 1}
    assert raters["excluded"].to_dict() == {"r1": False, "r2": False, "r3": True}
    # With r3 kept, C would gain: its scores are all 3 in r3's answers.
    kept = score_study(HAND_KEY, read_answers(write_answers(tmp_path), HAND_KEY), max_failed_checks=1)
    assert kept.rankings.set_index(["criterion", "category", "method"]).loc[
        ("all", "all", "C"), "mean"
    ] == pytest.approx((11 + 12) / 12)
    (tmp_path / "only").mkdir()
    only_r3 = write_answers(tmp_path / "only", {"r3": HAND_ANSWERS["r3"]})
    with pytest.raises(UsageError, match="all 1 rater"):
        score_study(HAND_KEY, read_answers(only_r3, HAND_KEY))


def test_kendalls_w_against_hand_computations(tmp_path: Path) -> None:
    assert kendalls_w(np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]])) == pytest.approx(1.0)
    assert kendalls_w(np.array([[1, 2, 3, 4], [4, 3, 2, 1]])) == pytest.approx(0.0)
    # m = 2, n = 3: rank sums 3, 3, 6 (mean 4), S = 6, W = 12·6 / (4·24) = 0.75.
    assert kendalls_w(np.array([[1, 2, 3], [2, 1, 3]])) == pytest.approx(0.75)
    agreement = score_study(HAND_KEY, read_answers(write_answers(tmp_path), HAND_KEY)).agreement.set_index("criterion")
    # q1 quality 0.75, q1 preservation 0.75, q2 quality 0.75, q2 preservation: sums 3, 5, 4 -> S = 2 -> 0.25.
    assert agreement.loc["quality", "kendalls_w"] == pytest.approx(0.75)
    assert agreement.loc["preservation", "kendalls_w"] == pytest.approx(0.5)
    assert agreement.loc["all", "kendalls_w"] == pytest.approx(0.625)
    assert agreement.loc["all", "questions"] == 4


def test_cluster_bootstrap_ci() -> None:
    assert cluster_bootstrap_ci(np.full(6, 2.0), np.array([1, 1, 2, 2, 3, 3])) == (2.0, 2.0)
    values, clusters = np.array([1.0, 1.0, 4.0, 4.0]), np.array(["a", "a", "b", "b"])
    low, high = cluster_bootstrap_ci(values, clusters)
    assert low == pytest.approx(1.0) and high == pytest.approx(4.0), "resampling whole questions: means 1, 2.5, 4"


def test_score_cli_reads_json_and_csv_and_writes_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "pack.key.json"
    key_path.write_text(json.dumps(HAND_KEY))
    paths = write_answers(tmp_path)
    csv_rows = [
        {"pack_id": "hand", "rater": "r2", "question": q, "criterion": c, "place": i + 1, "option": t}
        for (q, c), ranking in HAND_ANSWERS["r2"].items()
        for i, t in enumerate(ranking)
    ]
    pd.DataFrame(csv_rows).to_csv(tmp_path / "r2.csv", index=False)
    out = tmp_path / "scored"
    code = score_main(
        argparse.Namespace(
            key=str(key_path), answers=[str(paths[0]), str(tmp_path / "r2.csv"), str(paths[2])], out=str(out)
        )
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 excluded for failing attention checks (r3)" in printed
    assert re.search(r"\| A \| 2\.625 \[[0-9.]+, [0-9.]+\] \|", printed)
    table = pd.read_csv(out / "average_ranking.csv")
    overall = table[(table["criterion"] == "all") & (table["category"] == "all")].set_index("method")["mean"]
    assert overall.to_dict() == pytest.approx({"A": 21 / 8, "B": 2.0, "C": 11 / 8})
    assert (out / "study.md").is_file() and (out / "agreement.csv").is_file() and (out / "raters.csv").is_file()


def test_bad_answers_are_one_line_errors(tmp_path: Path) -> None:
    wrong_pack = write_answers(tmp_path, {"r1": HAND_ANSWERS["r1"]}, pack_id="other")
    with pytest.raises(UsageError, match=r"answers-r1\.json: answers to pack other"):
        read_answers(wrong_pack, HAND_KEY)
    twice = {"r1": {**HAND_ANSWERS["r1"], ("q1", "quality"): ["a1", "a1", "c1"]}}
    with pytest.raises(UsageError, match=r"rater r1, question q1, quality: the ranking must place each"):
        read_answers(write_answers(tmp_path, twice), HAND_KEY)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(UsageError, match=r"junk\.json: not an answers export"):
        read_answers([tmp_path / "junk.json"], HAND_KEY)


# ---------------------------------------------------------------------------------------------- ablation view
ABLATION_METHODS = (
    ("clic", "paper"),
    ("clic", "paper"),
    ("clic", "paper"),
    ("clic", "paper"),
    ("clic", "official-code"),
    ("cut_paste", "default"),
)
ABLATION_LEARN = [
    {"steps": 30},
    {"steps": 30, "terms": {"att": 0.0}},
    {"steps": 30, "terms": {"roi": 0.0}},
    {"steps": 30, "terms": {"con": {"weight": 0.0, "alpha": 0.5}}},
    {"steps": 30},
    {},
]
# The suite lists the full objective first and then w/o att, roi, con (the paper's Fig. 8 order, not alphabetical).
ABLATION_SUITE = [
    {"name": "clic", "presets": ["paper"], "loss_weights": {}, "learn": {"steps": 30}},
    {"name": "clic", "presets": ["paper"], "loss_weights": {"att": 0.0}, "learn": {"steps": 30}},
    {"name": "clic", "presets": ["paper"], "loss_weights": {"roi": 0.0}, "learn": {"steps": 30}},
    {"name": "clic", "presets": ["paper"], "loss_weights": {"con": 0.0}, "learn": {"steps": 30}},
    {"name": "clic", "presets": ["official-code"], "loss_weights": {}, "learn": {"steps": 30}},
    {"name": "cut_paste", "presets": ["default"], "loss_weights": {}, "learn": {}},
]
FIG8_COLUMNS = ["clic/paper", "clic/paper no_att", "clic/paper no_roi", "clic/paper no_con", "clic/official-code"]


def test_report_ablation_view_in_fig8_layout(tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path, {"furniture": 2, "jewelry": 1}, ABLATION_METHODS, ABLATION_LEARN, ABLATION_SUITE)
    index = write_report(run_dir)
    page = index.read_text()
    section = page[page.index('id="ablations"') : page.index('<h2 id="images">Images</h2>')]
    grid = section[section.index('id="ablation-grid"') :]
    headers = re.findall(r"<th>([^<]*)</th>", grid)
    assert headers == ["pair", "source", "target", *FIG8_COLUMNS], "columns follow the suite file"
    assert grid.count("<tr>") == 1 + 3, "a row per pair"
    assert "cut_paste" not in section, "only the ablated method's presets and variants"
    table = pd.read_csv(index.parent / "tables" / "ablations.csv")
    assert list(table["method"]) == FIG8_COLUMNS
    means = table.set_index("method")["ssim_outside"].str.split(" ").str[0].astype(float)
    assert means["clic/paper no_roi"] == pytest.approx(0.5 + 0.2 + 0.03), "entry 2's values 0.70, 0.73, 0.76"
    # Every table keeps the variants apart instead of pooling them into one clic/paper row.
    summary = pd.read_csv(index.parent / "tables" / "summary.csv")
    assert set(summary["preset"].dropna()) >= {"paper", "paper no_att", "paper no_roi", "paper no_con"}
    assert "Ablations" in (index.parent / "summary.md").read_text()
    assert 'src="plots/ablations.png"' in page, "the ablation table's CI-bar figure"
    # Fig. 8's reading: each variant of clic/paper paired against it (not official-code: another preset)
    paired = pd.read_csv(index.parent / "tables" / "ablations_paired.csv")
    assert set(paired["preset"]) == {"paper no_att", "paper no_roi", "paper no_con"}
    assert set(paired["reference_preset"]) == {"paper"}


def test_ordinary_runs_have_no_variants(tmp_path: Path) -> None:
    index = write_report(make_fake_run(tmp_path, {"furniture": 2}))
    assert 'id="ablations"' not in index.read_text()
    assert not (index.parent / "tables" / "ablations.csv").exists()
