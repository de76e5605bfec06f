"""Headless Chromium: rate a whole pack, export, score with `clic-bench score`; the report's images load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_study import METHODS, make_fake_run

from harness.analyse.report import write_report
from harness.analyse.study import BROKEN, CHROMIUM, build_pack, launch_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} is missing (.ci/setup installs it)"),
]

# Both careful raters prefer the methods in this order; the careless one puts the broken image first.
PREFERENCE = [f"{m}/{p}" for m, p in reversed(METHODS)]
CLI = str(Path(sys.executable).parent / "clic-bench")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def broken_images(page) -> list[str]:
    return page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")


def wait_saved(page) -> None:
    """The page marks body[data-saved=yes] once everything it shows is committed to storage."""
    page.wait_for_selector("body[data-saved='yes']", state="attached")


def rate(page, key: dict, careless: bool) -> None:
    """Answer every question: the careful rater by PREFERENCE with the broken image last."""
    wait_saved(page)
    total = int(page.locator("#progress").inner_text().split(" of ")[1].split()[0])
    for _ in range(total):
        qid_tokens = page.eval_on_selector_all(
            "tr[data-criterion='quality'] select", "s => s.map(x => x.dataset.option)"
        )
        question = next(q for q in key["questions"].values() if set(q["options"]) == set(qid_tokens))
        rank = {label: i for i, label in enumerate(PREFERENCE + [BROKEN])}
        order = sorted(qid_tokens, key=lambda t: rank[question["options"][t]])
        if careless:
            order = order[::-1]
        for criterion in ("quality", "preservation"):
            for place, token in enumerate(order, start=1):
                page.select_option(f"select[data-criterion='{criterion}'][data-option='{token}']", str(place))
        wait_saved(page)
        assert page.locator("#status").inner_text() == "Ranked on both criteria."
        page.click("#next")


def test_rate_export_and_score_a_pack(browser, tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path, {"furniture": 4, "jewelry": 3})
    index, key_path = build_pack(run_dir, tmp_path / "pack", n_pairs=4, n_raters=3, seed=1)
    key = json.loads(key_path.read_text())
    answer_files = []
    for rater, careless in (("r1", False), ("r2", False), ("r3", True)):
        page = browser.new_page(accept_downloads=True)
        page.goto(index.as_uri() + f"?rater={rater}")
        assert not broken_images(page)
        rate(page, key, careless)
        assert page.locator("#finish").is_visible()
        assert "All questions are ranked" in page.locator("#finish-status").inner_text()
        exported = json.loads(page.locator("#export").input_value())
        assert exported == {**json.loads(page.evaluate("window.studyExport()")), "exported_at": exported["exported_at"]}
        assert exported["complete"] and len(exported["answers"]) == 2 * len(key["questions"])
        with page.expect_download() as download:
            page.click("#download-json")
        path = tmp_path / f"answers-{rater}.json"
        download.value.save_as(path)
        answer_files.append(path)
        # The answers survive a reload: each change was acknowledged only after it was stored.
        page.reload()
        wait_saved(page)
        assert page.locator("#progress").inner_text().startswith(f"Rater {rater}: {len(key['questions'])} of")
        page.close()

    scored = subprocess.run(
        [CLI, "score", str(key_path), *map(str, answer_files), "--out", str(tmp_path / "scored")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scored.returncode == 0, scored.stderr
    assert "3 answered, 1 excluded for failing attention checks (r3)" in scored.stdout
    rankings = pd.read_csv(tmp_path / "scored" / "average_ranking.csv")
    overall = rankings[(rankings["criterion"] == "all") & (rankings["category"] == "all")].set_index("method")["mean"]
    assert overall.to_dict() == pytest.approx({label: len(METHODS) - i for i, label in enumerate(PREFERENCE)})
    agreement = pd.read_csv(tmp_path / "scored" / "agreement.csv").set_index("criterion")
    assert agreement.loc["all", "kendalls_w"] == pytest.approx(1.0)


def test_report_index_images_load(browser, tmp_path: Path) -> None:
    run_dir = make_fake_run(tmp_path, {"furniture": 2, "jewelry": 1})
    index = write_report(run_dir)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate("document.images.length") >= 3 * (2 + 2 * len(METHODS))
    assert not broken_images(page)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    page.close()


# Elements wider than the page, measured in the browser: tables (and the images in them) whose right edge is past
# the viewport, or a document that scrolls sideways.
OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll('table, img, figure')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.tagName + ' ' + (e.className || '') + ' ' + (e.id || e.getAttribute('alt') || e.innerText.slice(0, 60))
         + ' right=' + Math.round(e.getBoundingClientRect().right));
  if (document.documentElement.scrollWidth > width) out.push('document scrollWidth=' + document.documentElement.scrollWidth);
  return out;
}"""


def assert_fits_and_loads(browser, index: Path, min_images: int) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate("document.images.length") >= min_images
    assert not broken_images(page)
    assert page.evaluate(OVERFLOW_JS) == []
    # the check sees a table that is too wide
    page.evaluate("""document.body.insertAdjacentHTML('beforeend',
        '<table><tr><td style="min-width: 1300px">too wide</td></tr></table>')""")
    assert any("too wide" in problem for problem in page.evaluate(OVERFLOW_JS))
    page.close()


def test_report_and_compare_pages_fit_1200_px_and_every_image_loads(browser, tmp_path: Path) -> None:
    """The tstart-like run (ten metrics, four method labels, expected images, a long weights label) at 1200 px."""
    import argparse

    from test_report_page import make_sweep_run

    from harness.analyse.compare_page import compare_main

    run_a = make_sweep_run(tmp_path / "a")
    index = write_report(run_a)
    # headline + per-table + paired + t_start figures, 2 categories' grids (4 + 2 pairs × (3 inputs + 4 outputs + 3
    # attention maps)), one loss figure
    assert_fits_and_loads(browser, index, min_images=6 * 10)
    run_b = make_sweep_run(tmp_path / "b", worse_pair="fur3")
    args = argparse.Namespace(
        run_a=str(run_a), run_b=str(run_b), metric=None, max_drop=0.0, alpha=0.05, html=str(tmp_path / "compare")
    )
    compare_main(args)
    assert_fits_and_loads(browser, tmp_path / "compare" / "index.html", min_images=1 + 3 * 5)
