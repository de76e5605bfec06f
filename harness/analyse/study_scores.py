"""Scoring a user study: the raters' exported answers against the pack's key (see :mod:`harness.analyse.study`).

`clic-bench score KEY ANSWERS...` gives the paper's Table 1 format: the average ranking per method with N =
best for N methods, overall, per criterion and per category, with bootstrap CIs over questions, Kendall's W
between raters, and the raters who failed an attention check excluded and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analyse.aggregate import ALL_CATEGORIES, TINY_RANDOM_NOTE, format_number, to_markdown
from harness.analyse.bootstrap import bootstrap_ci
from harness.analyse.study import BROKEN, CRITERIA
from harness.errors import UsageError

# ---------------------------------------------------------------------------------------------- answers


def read_answers(paths: Iterable[str | Path], key: Mapping[str, Any]) -> pd.DataFrame:
    """Exported answers (JSON from the page, or CSV) as rows rater, question, criterion, place, option.

    `place` is 1 for the option ranked best. Every problem is one line naming the file and question.
    """
    frames, owner = [], {}
    left_out: list[tuple[Path, str]] = []
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
        kept, dropped = _split_check_only_raters(frame, key)
        frames.append(kept)
        left_out += [(path, rater) for rater in dropped]
    answers = pd.concat(frames, ignore_index=True)[["rater", "question", "criterion", "place", "option"]]
    if answers.empty:  # a partial export after the first screen gives such a file
        path, rater = left_out[0]
        raise UsageError(
            f"{path}: rater {rater} answered only the attention check(s): no question to score"
            + (f" (nor did the {len(left_out) - 1} other rater(s))" if len(left_out) > 1 else "")
        )
    for path, rater in left_out:
        print(f"score: {path}: rater {rater} answered only the attention check(s); left out", file=sys.stderr)
    return answers


def _split_check_only_raters(frame: pd.DataFrame, key: Mapping[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """The rows of raters who answered a scored question, and the raters who answered only attention checks."""
    is_check = frame["question"].map(lambda q: bool(key["questions"][q]["check"])).astype(bool)
    answered = set(frame.loc[~is_check, "rater"])
    return frame[frame["rater"].isin(answered)], sorted(set(frame["rater"]) - answered)


def _read_answer_file(path: Path) -> pd.DataFrame:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports start with a byte-order mark
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if path.suffix.lower() == ".csv":
        lines = text.splitlines()
        try:  # a spreadsheet in a comma-decimal locale writes ';' (or tabs) between the columns
            dialect = csv.Sniffer().sniff(lines[0] if lines else "", delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        rows = list(csv.DictReader(lines, dialect=dialect))
        needed = {"pack_id", "rater", "question", "criterion", "place", "option"}
        if not rows or not needed <= set(rows[0]):
            found = ", ".join(map(repr, rows[0])) if rows else "none"
            raise UsageError(f"{path}: a CSV of answers needs the columns {', '.join(sorted(needed))} (found {found})")
        _check_answer_fields(rows, path)
        try:
            return pd.DataFrame(rows).astype({"place": int})
        except ValueError:
            raise UsageError(f"{path}: column place must hold whole numbers") from None
    try:
        data = json.loads(text)
        rows = [
            {
                "pack_id": data["pack_id"],
                "rater": data["rater"],
                "question": answer["question"],
                "criterion": answer["criterion"],
                "place": place,
                "option": option,
            }
            for answer in data["answers"]
            for place, option in enumerate(answer["ranking"], start=1)
        ]
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
    broken = {
        qid: next(t for t, m in q["options"].items() if m == BROKEN)
        for qid, q in key["questions"].items()
        if q["check"]
    }
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
    return scored.assign(
        method=[questions[q]["options"][t] for q, t in zip(scored["question"], scored["option"])],
        category=scored["question"].map(lambda q: questions[q]["category"]),
        score=n_options - scored["place"] + 1,
    )


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
            rows.append(
                {
                    "method": method,
                    "criterion": criterion,
                    "category": category,
                    "n": len(mine),
                    "mean": mine["score"].mean() if len(mine) else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


def kendalls_w(ranks: np.ndarray) -> float:
    """Kendall's coefficient of concordance of an (m raters × n items) matrix of ranks without ties.

    W = 12 S / (m² (n³ − n)), S = Σ_i (R_i − R̄)², R_i the rank sum of item i: 1 = all raters agree, 0 = none.
    """
    m, n = ranks.shape
    rank_sums = ranks.sum(axis=0)
    s = float(((rank_sums - rank_sums.mean()) ** 2).sum())
    return 12.0 * s / (m**2 * (n**3 - n))


def agreement(scores: pd.DataFrame) -> pd.DataFrame:
    """Kendall's W per criterion, averaged over the questions that at least two raters ranked."""
    rows = []
    for criterion, group in [("all", scores), *scores.groupby("criterion", sort=False)]:
        per_question = []
        for _, rows_q in group.groupby(["question", "criterion"]):
            matrix = rows_q.pivot_table(index="rater", columns="option", values="place").dropna()
            if len(matrix) >= 2:
                per_question.append(kendalls_w(matrix.to_numpy(float)))
        rows.append(
            {
                "criterion": criterion,
                "questions": len(per_question),
                "kendalls_w": float(np.mean(per_question)) if per_question else float("nan"),
            }
        )
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
    return StudyScore(average_rankings(scores, key["methods"]), agreement(scores), raters, bool(key.get("tiny_random")))


def ranking_table(rankings: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 layout: a row per method, a column per criterion and category ("mean [CI]")."""

    def cell(row: Any) -> str:
        return f"{format_number(row.mean)} [{format_number(row.ci_low)}, {format_number(row.ci_high)}]"

    shown = rankings.assign(
        cell=[cell(r) for r in rankings.itertuples()],
        column=[
            CRITERIA[c][0].lower() if c in CRITERIA else ("overall" if cat == ALL_CATEGORIES else cat)
            for c, cat in zip(rankings["criterion"], rankings["category"])
        ],
    )
    table = shown.pivot_table(index="method", columns="column", values="cell", aggfunc="first", sort=False)
    overall_n = rankings[rankings["criterion"].eq("all") & rankings["category"].eq(ALL_CATEGORIES)]
    table["n"] = overall_n.set_index("method")["n"]
    order = [
        "overall",
        *(CRITERIA[c][0].lower() for c in CRITERIA),
        *sorted(c for c in table.columns if c not in ("overall", "n", *(CRITERIA[k][0].lower() for k in CRITERIA))),
        "n",
    ]
    return table.reindex(columns=[c for c in order if c in table.columns]).rename_axis(None, axis=1).reset_index()


def study_markdown(result: StudyScore, n_methods: int) -> str:
    excluded = result.raters[result.raters["excluded"]]
    lines = ["# User study: average ranking\n"]
    if result.tiny_random:
        lines.append(f"{TINY_RANDOM_NOTE}\n")
    lines.append(
        f"Rank {n_methods} = best, 1 = worst (the paper's Table 1 format); mean [95% bootstrap CI over "
        f"questions]. Raters: {len(result.raters)} answered, {len(excluded)} excluded for failing attention "
        f"checks" + (f" ({', '.join(map(markdown_text, excluded['rater']))})" if len(excluded) else "") + ".\n"
    )
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
