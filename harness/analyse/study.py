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

Scoring the answers is :mod:`harness.analyse.study_scores`.

`python -m harness.analyse.study screenshot PAGE OUT.png` photographs a page (a report or a rating page) in
headless Chromium, for people who want to look without a browser of their own.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from clic import is_random_weights
from harness.analyse.aggregate import TINY_RANDOM_NOTE
from harness.analyse.report import manifest_pairs, thumbnail, with_variants
from harness.errors import UsageError
from harness.plan.identity import method_label
from harness.plan.jobs import content_id
from harness.store import read_plan_results, read_run_record

CRITERIA = {
    "quality": (
        "Edit quality",
        "How well is the concept of the source region transferred into the marked "
        "region of the target, and how natural does the result look?",
    ),
    "preservation": (
        "Target preservation",
        "How well is the target object kept as it was outside the marked region (its shape, identity and background)?",
    ),
}
BROKEN = "__attention_check__"  # the key's name for the broken option of an attention check
CHECK_FRACTION = 0.1  # attention-check questions per scored question (at least one)
IMAGE_PIXELS = 256  # images in a pack are at most this wide
BROKEN_GREY = (128, 128, 128)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


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
        matches = [label for label in available if label == name] or [
            label for label in available if label.split("/", 1)[0] == name
        ]
        if len(matches) != 1:
            problem = (
                f"is ambiguous: name one of {', '.join(matches)}"
                if matches
                else f"is not in the run (available: {', '.join(available)})"
            )
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
            found.append(
                Candidate(
                    str(pair_id),
                    str(category),
                    {m: run_dir / by_label.loc[m, "artifact_image"] for m in methods},
                    {m: str(by_label.loc[m, "job_id"]) for m in methods},
                )
            )
    return found


def stratified_sample(items: Sequence[Candidate], count: int, rng: np.random.Generator) -> list[Candidate]:
    """`count` items spread as evenly over categories as they allow: a seeded round robin of shuffled strata."""
    strata: dict[str, list[Candidate]] = {}
    for item in items:
        strata.setdefault(item.category, []).append(item)
    queues = {
        category: [members[i] for i in rng.permutation(len(members))] for category, members in sorted(strata.items())
    }
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


def build_pack(
    run_dir: str | Path,
    out: str | Path,
    n_pairs: int = 30,
    methods: Sequence[str] | None = None,
    n_raters: int = 1,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write the rating pack `out`/index.html (+ images) and its key next to it; return both paths."""
    run_dir, out = Path(run_dir), Path(out).resolve()
    if n_pairs < 1 or n_raters < 1:
        raise UsageError(f"--pairs and --raters must be positive, got {n_pairs} and {n_raters}")
    results, labels, pool, manifest = _pack_inputs(run_dir, methods)

    rng = np.random.default_rng(seed)
    scored = stratified_sample(pool, n_pairs, rng)
    # Checks prefer pairs not already asked about: a repeated source/target would give them away.
    unused = [c for c in pool if c not in scored] or list(scored)
    checks = stratified_sample(unused, max(1, round(CHECK_FRACTION * len(scored))), rng)
    questions = [(c, False) for c in scored] + [(c, True) for c in checks]
    questions = [questions[i] for i in rng.permutation(len(questions))]

    shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True)
    public, secret = _write_questions(questions, manifest, labels, rng, out)

    raters = [f"r{i}" for i in range(1, n_raters + 1)]
    orders = _rater_orders(public, raters, rng)
    weights = sorted(
        set(results.loc[results["method"].isin({label.split("/", 1)[0] for label in labels}), "weights_label"].dropna())
    )
    pack_id = content_id({"run": str(run_dir.resolve()), "seed": seed, "questions": secret, "raters": orders})[:16]
    tiny_random = any(is_random_weights(w) for w in weights)
    page_data = {
        "pack_id": pack_id,
        "criteria": [{"id": k, "name": n, "question": q} for k, (n, q) in CRITERIA.items()],
        "questions": public,
        "raters": orders,
        "notice": TINY_RANDOM_NOTE if tiny_random else "",
    }
    (out / "index.html").write_text(_rating_page(page_data), encoding="utf-8")
    key = {
        "pack_id": pack_id,
        "run": str(run_dir.resolve()),
        "seed": seed,
        "methods": labels,
        "criteria": list(CRITERIA),
        "raters": raters,
        "questions": secret,
        "weights_labels": weights,
        "tiny_random": tiny_random,
    }
    key_path = key_path_for(out)
    key_path.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out / "index.html", key_path


def _pack_inputs(
    run_dir: Path, methods: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str], list[Candidate], dict[str, dict[str, Path | None]]]:
    """The run's results, the method labels of the pack, the pairs that have a transfer output of each and the
    pairs' input images; a run that cannot make a pack is refused in one line."""
    results = read_plan_results(run_dir)[0]  # the folder's current plan only
    if results.empty:
        raise UsageError(f"{run_dir}: the run has no results")
    results = with_variants(results)
    run_info = read_run_record(run_dir)
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
    return results, labels, pool, manifest


def _write_questions(
    questions: Sequence[tuple[Candidate, bool]],
    manifest: Mapping[str, Mapping[str, Path | None]],
    labels: Sequence[str],
    rng: np.random.Generator,
    out: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each question's images under ``out``/images with random option tokens; what the page shows (public) and
    what the key keeps (secret: pair, check, token → method label and job)."""
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
        public[qid] = {
            "source": f"images/{qid}-source.png",
            "target": f"images/{qid}-target.png",
            "options": {token: f"images/{token}.png" for token in options},
        }
        secret[qid] = {
            "pair_id": candidate.pair_id,
            "category": candidate.category,
            "check": is_check,
            "options": options,
            "jobs": {t: candidate.jobs.get(m) for t, m in options.items()},
        }
    return public, secret


def _rater_orders(public: Mapping[str, Any], raters: Sequence[str], rng: np.random.Generator) -> dict[str, list]:
    """Each rater's own question order, and own option order in every question."""
    orders: dict[str, list] = {}
    for rater in raters:  # each rater: own question order, own option order in every question
        qids = [list(public)[i] for i in rng.permutation(len(public))]
        orders[rater] = [
            {
                "question": q,
                "options": [list(public[q]["options"])[i] for i in rng.permutation(len(public[q]["options"]))],
            }
            for q in qids
        ]
    return orders


def _rating_page(page_data: Mapping[str, Any]) -> str:
    """The template with its CSS, JS and the pack's data inlined: one file that works from disk."""
    templates = resources.files("harness") / "templates"
    data = json.dumps(page_data, sort_keys=True).replace("</", "<\\/")  # no "</script>" inside the script
    return string.Template((templates / "study.html").read_text(encoding="utf-8")).substitute(
        css=(templates / "study.css").read_text(encoding="utf-8"),
        js=(templates / "study.js").read_text(encoding="utf-8"),
        data=data,
        pack_id=html.escape(str(page_data["pack_id"])),
    )


def pack_main(args: argparse.Namespace) -> int:
    """`clic-bench pack RUN --pairs N --methods ... --raters R --seed S --out DIR`."""
    from harness.analyse.remote_runs import run_folder_to_read

    with run_folder_to_read(args.run) as run_dir:  # a run on object storage: only the packed images are fetched
        index, key = build_pack(
            run_dir, args.out, n_pairs=args.pairs, methods=args.methods, n_raters=args.raters, seed=args.seed
        )
    key_data = json.loads(key.read_text())
    n_checks = sum(q["check"] for q in key_data["questions"].values())
    print(
        f"pack: {index} ({len(key_data['questions']) - n_checks} questions + {n_checks} attention checks, "
        f"{len(key_data['raters'])} raters: open index.html?rater=r1 ...)"
    )
    print(f"key (keep it away from raters): {key}")
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
    parser = argparse.ArgumentParser(
        prog="python -m harness.analyse.study", description="screenshots of reports and packs"
    )
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
