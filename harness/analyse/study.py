"""Blinded user studies: build a rating pack from a run, then score the raters' exported answers.

`clic-bench pack RUN --pairs 30 --methods ... --raters N --out DIR` writes DIR/index.html (one page,
inline CSS/JS and data, images under DIR/images/; opens from disk or any static host) and the key
DIR.key.json *next to* the folder, so the folder can be handed out without revealing which image is which
method. Every rater sees the questions and the options of each question in their own seeded order. A few
attention-check questions replace one option by an obviously broken image (flat grey): a careful rater
ranks it last on both criteria.

Raters rank the options on the paper's two criteria (edit quality, target preservation), 1st = best. The
page keeps the answers in localStorage and exports them as JSON or CSV. `clic-bench score KEY ANSWERS...`
turns them into the paper's Table 1 format: the average ranking per method with N = best for N methods,
overall, per criterion and per category, with bootstrap CIs over questions, Kendall's W between raters,
and the raters who failed an attention check excluded and counted.

`python -m harness.analyse.study screenshot PAGE OUT.png` photographs a page (a report or a rating page) in
headless Chromium, for people who want to look without a browser of their own.
"""
from __future__ import annotations

import argparse
import csv
import html
import json
import re
import shutil
import string
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from clic import TINY_RANDOM
from harness.analyse.aggregate import ALL_CATEGORIES, TINY_RANDOM_NOTE, format_number, to_markdown
from harness.analyse.bootstrap import bootstrap_ci
from harness.errors import UsageError
from harness.plan.jobs import content_id
from harness.analyse.report import manifest_pairs, thumbnail, with_variants
from harness.plan.identity import method_label
from harness.store import read_results, read_run_manifest

CRITERIA = {
    "quality": ("Edit quality", "How well is the concept of the source region transferred into the marked "
                                "region of the target, and how natural does the result look?"),
    "preservation": ("Target preservation", "How well is the target object kept as it was outside the "
                                            "marked region (its shape, identity and background)?"),
}
BROKEN = "__attention_check__"  # the key's name for the broken option of an attention check
CHECK_FRACTION = 0.1  # attention-check questions per scored question (at least one)
IMAGE_PIXELS = 256  # images in a pack are at most this wide
BROKEN_GREY = (128, 128, 128)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


# ---------------------------------------------------------------------------------------------- packing

@dataclass(frozen=True)
class Candidate:
    """One pair with an output of every chosen method: output image path per method label."""

    pair_id: str
    category: str
    outputs: Mapping[str, Path]
    jobs: Mapping[str, str]


def key_path_for(pack_dir: str | Path) -> Path:
    """Where the key of a pack folder goes: next to the folder, never inside it (DIR.key.json)."""
    pack_dir = Path(pack_dir).resolve()
    return pack_dir.with_name(pack_dir.name + ".key.json")


def choose_methods(available: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """Method labels for the pack: all available, or each requested one named by label or by method name.

    A method name stands for its one label ("cut_paste" -> "cut_paste/default"); a name with several
    labels (presets or ablation variants) must be given as a label.
    """
    if not requested:
        return list(available)
    chosen = []
    for name in requested:
        matches = [label for label in available if label == name] or \
                  [label for label in available if label.split("/", 1)[0] == name]
        if len(matches) != 1:
            problem = (f"is ambiguous: name one of {', '.join(matches)}" if matches else
                       f"is not in the run (available: {', '.join(available)})")
            raise UsageError(f"--methods: {name!r} {problem}")
        if matches[0] in chosen:
            raise UsageError(f"--methods: {name!r} is given twice")
        chosen.append(matches[0])
    if len(chosen) < 2:
        raise UsageError(f"--methods: a ranking needs at least 2 methods, got {len(chosen)}")
    return chosen


def candidates(run_dir: Path, results: pd.DataFrame, methods: Sequence[str]) -> list[Candidate]:
    """Pairs whose transfer has an output image for every method (lowest seed, first settings per method)."""
    ok = results[results["task"].eq("transfer") & results["status"].eq("ok") & results["artifact_image"].notna()]
    ok = ok.assign(label=[method_label(m, p) for m, p in zip(ok["method"], ok["preset"])])
    ok = ok[ok["label"].isin(methods)].sort_values(["seed", "settings", "job_id"]).drop_duplicates(["pair_id", "label"])
    found = []
    for (pair_id, category), rows in ok.groupby(["pair_id", "category"], sort=True):
        by_label = rows.set_index("label")
        if set(methods) <= set(by_label.index):
            found.append(Candidate(str(pair_id), str(category),
                                   {m: run_dir / by_label.loc[m, "artifact_image"] for m in methods},
                                   {m: str(by_label.loc[m, "job_id"]) for m in methods}))
    return found


def stratified_sample(items: Sequence[Candidate], count: int, rng: np.random.Generator) -> list[Candidate]:
    """`count` items spread as evenly over categories as they allow: a seeded round robin of shuffled strata."""
    strata: dict[str, list[Candidate]] = {}
    for item in items:
        strata.setdefault(item.category, []).append(item)
    queues = {category: [members[i] for i in rng.permutation(len(members))]
              for category, members in sorted(strata.items())}
    chosen: list[Candidate] = []
    while len(chosen) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def _token(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list(string.ascii_lowercase + string.digits), 10))


def _save_image(source: Path, dest: Path, mask: Path | None = None) -> None:
    if not thumbnail(source, dest, mask, pixels=IMAGE_PIXELS):
        raise UsageError(f"{source}: cannot read the image for the pack")


def build_pack(run_dir: str | Path, out: str | Path, n_pairs: int = 30, methods: Sequence[str] | None = None,
               n_raters: int = 1, seed: int = 0) -> tuple[Path, Path]:
    """Write the rating pack `out`/index.html (+ images) and its key next to it; return both paths."""
    run_dir, out = Path(run_dir), Path(out).resolve()
    if n_pairs < 1 or n_raters < 1:
        raise UsageError(f"--pairs and --raters must be positive, got {n_pairs} and {n_raters}")
    results = read_results(run_dir)
    if results.empty:
        raise UsageError(f"{run_dir}: the run has no results")
    results = with_variants(results)
    run_info = read_run_manifest(run_dir)
    transfers = results[results["task"].eq("transfer") & results["artifact_image"].notna()]
    available = sorted({method_label(m, p) for m, p in zip(transfers["method"], transfers["preset"])})
    labels = choose_methods(available, methods)
    pool = candidates(run_dir, results, labels)
    if not pool:
        raise UsageError(f"{run_dir}: no pair has a transfer output of every method ({', '.join(labels)})")
    manifest = manifest_pairs(run_dir, run_info)
    missing = sorted({c.pair_id for c in pool} - set(manifest))
    if missing:
        raise UsageError(f"{run_dir}: the run's manifest has no source/target images for pair(s) {', '.join(missing)}")

    rng = np.random.default_rng(seed)
    scored = stratified_sample(pool, n_pairs, rng)
    # Checks prefer pairs not already asked about: a repeated source/target would give them away.
    unused = [c for c in pool if c not in scored] or list(scored)
    checks = stratified_sample(unused, max(1, round(CHECK_FRACTION * len(scored))), rng)
    questions = [(c, False) for c in scored] + [(c, True) for c in checks]
    questions = [questions[i] for i in rng.permutation(len(questions))]

    shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True)
    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for number, (candidate, is_check) in enumerate(questions, start=1):
        qid = f"q{number:02d}"
        paths = manifest[candidate.pair_id]
        for role in ("source", "target"):
            _save_image(paths[f"{role}_image"], out / "images" / f"{qid}-{role}.png", paths.get(f"{role}_mask"))
        shown = dict(candidate.outputs)
        if is_check:
            replaced = labels[int(rng.integers(len(labels)))]
            del shown[replaced]
        options: dict[str, str] = {}
        for label, image in shown.items():
            token = _token(rng)
            _save_image(image, out / "images" / f"{token}.png")
            options[token] = label
        if is_check:
            token = _token(rng)
            with Image.open(out / "images" / f"{qid}-target.png") as target:
                Image.new("RGB", target.size, BROKEN_GREY).save(out / "images" / f"{token}.png")
            options[token] = BROKEN
        public[qid] = {"source": f"images/{qid}-source.png", "target": f"images/{qid}-target.png",
                       "options": {token: f"images/{token}.png" for token in options}}
        secret[qid] = {"pair_id": candidate.pair_id, "category": candidate.category, "check": is_check,
                       "options": options, "jobs": {t: candidate.jobs.get(m) for t, m in options.items()}}

    raters = [f"r{i}" for i in range(1, n_raters + 1)]
    orders = {}
    for rater in raters:  # each rater: own question order, own option order in every question
        qids = [list(public)[i] for i in rng.permutation(len(public))]
        orders[rater] = [{"question": q, "options": [list(public[q]["options"])[i]
                                                     for i in rng.permutation(len(public[q]["options"]))]}
                         for q in qids]
    weights = sorted(set(results.loc[results["method"].isin({l.split("/", 1)[0] for l in labels}),
                                     "weights_label"].dropna()))
    pack_id = content_id({"run": str(run_dir.resolve()), "seed": seed, "questions": secret, "raters": orders})[:16]
    tiny_random = any(TINY_RANDOM in w for w in weights)
    page_data = {"pack_id": pack_id, "criteria": [{"id": k, "name": n, "question": q} for k, (n, q) in CRITERIA.items()],
                 "questions": public, "raters": orders, "notice": TINY_RANDOM_NOTE if tiny_random else ""}
    (out / "index.html").write_text(_rating_page(page_data), encoding="utf-8")
    key = {"pack_id": pack_id, "run": str(run_dir.resolve()), "seed": seed, "methods": labels,
           "criteria": list(CRITERIA), "raters": raters, "questions": secret, "weights_labels": weights,
           "tiny_random": tiny_random}
    key_path = key_path_for(out)
    key_path.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out / "index.html", key_path


def _rating_page(page_data: Mapping[str, Any]) -> str:
    """The template with its CSS, JS and the pack's data inlined: one file that works from disk."""
    templates = resources.files("harness") / "templates"
    data = json.dumps(page_data, sort_keys=True).replace("</", "<\\/")  # no "</script>" inside the script
    return string.Template((templates / "study.html").read_text(encoding="utf-8")).substitute(
        css=(templates / "study.css").read_text(encoding="utf-8"),
        js=(templates / "study.js").read_text(encoding="utf-8"), data=data,
        pack_id=html.escape(str(page_data["pack_id"])))


def pack_main(args: argparse.Namespace) -> int:
    """`clic-bench pack RUN --pairs N --methods ... --raters R --seed S --out DIR`."""
    index, key = build_pack(args.run, args.out, n_pairs=args.pairs, methods=args.methods, n_raters=args.raters,
                            seed=args.seed)
    key_data = json.loads(key.read_text())
    n_checks = sum(q["check"] for q in key_data["questions"].values())
    print(f"pack: {index} ({len(key_data['questions']) - n_checks} questions + {n_checks} attention checks, "
          f"{len(key_data['raters'])} raters: open index.html?rater=r1 ...)")
    print(f"key (keep it away from raters): {key}")
    return 0


# ---------------------------------------------------------------------------------------------- answers

def read_answers(paths: Iterable[str | Path], key: Mapping[str, Any]) -> pd.DataFrame:
    """Exported answers (JSON from the page, or CSV) as rows rater, question, criterion, place, option.

    `place` is 1 for the option ranked best. Every problem is one line naming the file and question.
    """
    frames, owner = [], {}
    for path in map(Path, paths):
        frame = _read_answer_file(path)
        for pack_id in set(frame["pack_id"]):
            if pack_id != key["pack_id"]:
                raise UsageError(f"{path}: answers to pack {pack_id}, but the key is of pack {key['pack_id']}")
        for rater in set(frame["rater"]):
            if rater in owner:
                raise UsageError(f"{path}: rater {rater} also answered in {owner[rater]}")
            owner[rater] = path
        _check_rankings(frame, key, path)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[["rater", "question", "criterion", "place", "option"]]


def _read_answer_file(path: Path) -> pd.DataFrame:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror or err})") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        needed = {"pack_id", "rater", "question", "criterion", "place", "option"}
        if not rows or not needed <= set(rows[0]):
            raise UsageError(f"{path}: a CSV of answers needs the columns {', '.join(sorted(needed))}")
        _check_answer_fields(rows, path)
        try:
            return pd.DataFrame(rows).astype({"place": int})
        except ValueError:
            raise UsageError(f"{path}: column place must hold whole numbers") from None
    try:
        data = json.loads(text)
        rows = [{"pack_id": data["pack_id"], "rater": data["rater"], "question": answer["question"],
                 "criterion": answer["criterion"], "place": place, "option": option}
                for answer in data["answers"] for place, option in enumerate(answer["ranking"], start=1)]
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path}: not an answers export of the rating page ({type(err).__name__}: {err})") from None
    if not rows:
        raise UsageError(f"{path}: no answers")
    _check_answer_fields(rows, path)
    return pd.DataFrame(rows)


ANSWER_TEXT_FIELDS = ("pack_id", "rater", "question", "criterion", "option")


def _check_answer_fields(rows: list[dict[str, Any]], path: Path) -> None:
    """Every id of an answer is a non-empty string (a list, a dict or a blank rater id is refused)."""
    for index, row in enumerate(rows):
        for name in ANSWER_TEXT_FIELDS:
            value = row[name]
            if not isinstance(value, str) or not value.strip():
                shown = repr(value) if isinstance(value, str) else f"a {type(value).__name__}"
                raise UsageError(f"{path}: answer {index + 1}: {name} must be a non-empty string, got {shown}")


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#])")  # "|" is escaped by to_markdown


def markdown_text(text: object) -> str:
    """Text from an answer file shown literally in Markdown: one line, its markup characters escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _check_rankings(frame: pd.DataFrame, key: Mapping[str, Any], path: Path) -> None:
    for (rater, qid, criterion), rows in frame.groupby(["rater", "question", "criterion"], sort=False):
        where = f"{path}: rater {rater}, question {qid}"
        if qid not in key["questions"]:
            raise UsageError(f"{where}: no such question in the pack")
        if criterion not in key["criteria"]:
            raise UsageError(f"{where}: unknown criterion {criterion!r} (known: {', '.join(key['criteria'])})")
        options = set(key["questions"][qid]["options"])
        if sorted(rows["place"]) != list(range(1, len(options) + 1)) or set(rows["option"]) != options:
            raise UsageError(f"{where}, {criterion}: the ranking must place each of the {len(options)} options once")


# ---------------------------------------------------------------------------------------------- scoring

def attention_check_failures(answers: pd.DataFrame, key: Mapping[str, Any]) -> pd.DataFrame:
    """Per rater: attention checks answered and failed (a check fails when the broken image is not last)."""
    broken = {qid: next(t for t, m in q["options"].items() if m == BROKEN)
              for qid, q in key["questions"].items() if q["check"]}
    n_options = {qid: len(q["options"]) for qid, q in key["questions"].items()}
    rows = []
    for rater, given in answers.groupby("rater", sort=True):
        checks = given[given["question"].isin(list(broken))]
        on_broken = checks[checks["option"].eq(checks["question"].map(broken))]
        failed = on_broken["place"].ne(on_broken["question"].map(n_options))
        rows.append({"rater": rater, "checks_answered": len(on_broken), "checks_failed": int(failed.sum())})
    return pd.DataFrame(rows, columns=["rater", "checks_answered", "checks_failed"])


def rank_scores(answers: pd.DataFrame, key: Mapping[str, Any]) -> pd.DataFrame:
    """Scored (non-check) answers with method, category and score = N + 1 − place (N = best of N)."""
    questions = key["questions"]
    is_check = answers["question"].map(lambda q: bool(questions[q]["check"])).astype(bool)
    scored = answers[~is_check]
    n_options = scored["question"].map(lambda q: len(questions[q]["options"]))
    return scored.assign(method=[questions[q]["options"][t] for q, t in zip(scored["question"], scored["option"])],
                         category=scored["question"].map(lambda q: questions[q]["category"]),
                         score=n_options - scored["place"] + 1)


def cluster_bootstrap_ci(values: np.ndarray, clusters: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean, resampling whole clusters (questions: one pair's ratings move together)."""
    return bootstrap_ci(values, clusters=clusters, seed=seed)


def average_rankings(scores: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Mean score per method, overall / per criterion / per category (criteria pooled), with question-bootstrap CIs."""
    views = [("all", ALL_CATEGORIES, scores)]
    views += [(criterion, ALL_CATEGORIES, group) for criterion, group in scores.groupby("criterion", sort=False)]
    views += [("all", category, group) for category, group in scores.groupby("category", sort=True)]
    rows = []
    for criterion, category, group in views:
        for method in methods:
            mine = group[group["method"].eq(method)]
            low, high = cluster_bootstrap_ci(mine["score"].to_numpy(float), mine["question"].to_numpy())
            rows.append({"method": method, "criterion": criterion, "category": category, "n": len(mine),
                         "mean": mine["score"].mean() if len(mine) else float("nan"), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def kendalls_w(ranks: np.ndarray) -> float:
    """Kendall's coefficient of concordance of an (m raters × n items) matrix of ranks without ties.

    W = 12 S / (m² (n³ − n)), S = Σ_i (R_i − R̄)², R_i the rank sum of item i: 1 = all raters agree, 0 = none.
    """
    m, n = ranks.shape
    rank_sums = ranks.sum(axis=0)
    s = float(((rank_sums - rank_sums.mean()) ** 2).sum())
    return 12.0 * s / (m ** 2 * (n ** 3 - n))


def agreement(scores: pd.DataFrame) -> pd.DataFrame:
    """Kendall's W per criterion, averaged over the questions that at least two raters ranked."""
    rows = []
    for criterion, group in [("all", scores), *scores.groupby("criterion", sort=False)]:
        per_question = []
        for _, rows_q in group.groupby(["question", "criterion"]):
            matrix = rows_q.pivot_table(index="rater", columns="option", values="place").dropna()
            if len(matrix) >= 2:
                per_question.append(kendalls_w(matrix.to_numpy(float)))
        rows.append({"criterion": criterion, "questions": len(per_question),
                     "kendalls_w": float(np.mean(per_question)) if per_question else float("nan")})
    return pd.DataFrame(rows)


@dataclass
class StudyScore:
    rankings: pd.DataFrame
    agreement: pd.DataFrame
    raters: pd.DataFrame  # rater, checks_answered, checks_failed, excluded
    tiny_random: bool


def score_study(key: Mapping[str, Any], answers: pd.DataFrame, max_failed_checks: int = 0) -> StudyScore:
    """Score answers against the key; raters with more than `max_failed_checks` failed checks are excluded."""
    raters = attention_check_failures(answers, key)
    raters["excluded"] = raters["checks_failed"] > max_failed_checks
    kept = answers[answers["rater"].isin(raters.loc[~raters["excluded"], "rater"])]
    if kept.empty:
        raise UsageError(f"all {len(raters)} rater(s) failed the attention checks: nothing to score")
    scores = rank_scores(kept, key)
    return StudyScore(average_rankings(scores, key["methods"]), agreement(scores), raters,
                      bool(key.get("tiny_random")))


def ranking_table(rankings: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 layout: a row per method, a column per criterion and category ("mean [CI]")."""
    def cell(row: Any) -> str:
        return f"{format_number(row.mean)} [{format_number(row.ci_low)}, {format_number(row.ci_high)}]"

    shown = rankings.assign(cell=[cell(r) for r in rankings.itertuples()],
                            column=[CRITERIA[c][0].lower() if c in CRITERIA else (
                                "overall" if cat == ALL_CATEGORIES else cat)
                                for c, cat in zip(rankings["criterion"], rankings["category"])])
    table = shown.pivot_table(index="method", columns="column", values="cell", aggfunc="first", sort=False)
    overall_n = rankings[rankings["criterion"].eq("all") & rankings["category"].eq(ALL_CATEGORIES)]
    table["n"] = overall_n.set_index("method")["n"]
    order = ["overall", *(CRITERIA[c][0].lower() for c in CRITERIA), *sorted(
        c for c in table.columns if c not in ("overall", "n", *(CRITERIA[k][0].lower() for k in CRITERIA))), "n"]
    return table.reindex(columns=[c for c in order if c in table.columns]).rename_axis(None, axis=1).reset_index()


def study_markdown(result: StudyScore, n_methods: int) -> str:
    excluded = result.raters[result.raters["excluded"]]
    lines = ["# User study: average ranking\n"]
    if result.tiny_random:
        lines.append(f"{TINY_RANDOM_NOTE}\n")
    lines.append(f"Rank {n_methods} = best, 1 = worst (the paper's Table 1 format); mean [95% bootstrap CI over "
                 f"questions]. Raters: {len(result.raters)} answered, {len(excluded)} excluded for failing attention "
                 f"checks" + (f" ({', '.join(map(markdown_text, excluded['rater']))})" if len(excluded) else "") + ".\n")
    lines.append(to_markdown(ranking_table(result.rankings), note=""))
    lines.append("## Agreement between raters (Kendall's W, mean over questions)\n")
    lines.append(to_markdown(result.agreement, note=""))
    lines.append("## Raters\n")
    lines.append(to_markdown(result.raters.assign(rater=result.raters["rater"].map(markdown_text)), note=""))
    return "\n".join(lines)


def load_key(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"{path}: cannot read the key ({err.strerror or err})") from None
    except ValueError as err:
        raise UsageError(f"{path}: not a pack key (invalid JSON: {err})") from None
    missing = [k for k in ("pack_id", "methods", "criteria", "questions") if k not in key]
    if missing:
        raise UsageError(f"{path}: not a pack key (missing {', '.join(missing)})")
    return key


def score_main(args: argparse.Namespace) -> int:
    """`clic-bench score KEY ANSWERS... [--out DIR]`: print the Markdown tables; write them (+ CSV) to DIR."""
    key = load_key(args.key)
    result = score_study(key, read_answers(args.answers, key))
    markdown = study_markdown(result, len(key["methods"]))
    print(markdown)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "study.md").write_text(markdown, encoding="utf-8")
        result.rankings.to_csv(out / "average_ranking.csv", index=False)
        result.agreement.to_csv(out / "agreement.csv", index=False)
        result.raters.to_csv(out / "raters.csv", index=False)
        print(f"tables: {out}")
    return 0


# ---------------------------------------------------------------------------------------------- screenshots

def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium driven by Playwright (no browser download: `playwright install` is never needed)."""
    if not Path(CHROMIUM).is_file():
        raise UsageError(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))


def screenshot(page_path: str, out: str | Path, width: int = 1200, full_page: bool = True) -> Path:
    """Save a PNG of a local HTML page ("?rater=r1" or "#ablations" may follow the file name)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise UsageError("screenshots need Playwright: pip install -c constraints.txt -e '.[test]'") from None
    split = min((page_path.find(c) for c in "?#" if c in page_path), default=len(page_path))
    file_part, suffix = page_path[:split], page_path[split:]
    target = Path(file_part).resolve()
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        raise UsageError(f"{target}: no such page")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(target.as_uri() + suffix)
        page.wait_for_load_state("load")
        page.screenshot(path=str(out), full_page=full_page)
        browser.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.analyse.study", description="screenshots of reports and packs")
    sub = parser.add_subparsers(dest="command", required=True)
    shot = sub.add_parser("screenshot", help="PNG of a report or rating page in headless Chromium")
    shot.add_argument("page", help="an HTML file or a folder with index.html; may end in ?rater=r1 or #anchor")
    shot.add_argument("out", help="PNG path")
    shot.add_argument("--width", type=int, default=1200)
    shot.add_argument("--viewport-only", action="store_true", help="only the first screen, not the full page")
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.page, args.out, width=args.width, full_page=not args.viewport_only))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
