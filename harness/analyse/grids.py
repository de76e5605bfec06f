"""The report's image grids: a bounded, stated sample of pairs per category, each a row of
source | target | expected (when the pair has one) | every method's output with its main scores under it,
and below it the methods' attention maps (only for methods that compute attention).

A grid never grows with the run: at most ``PAIRS_PER_CATEGORY`` pairs per category and task, chosen by a rule
the page states (the first pairs in pair-id order, so two runs of a suite show the same pairs), and per pair
and method label one output (the lowest seed, then the first settings). The compare page
(:mod:`harness.analyse.compare_page`) builds its rows with the same cells.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analyse.aggregate import format_number, method_labels
from harness.analyse.images import image_name, thumbnail  # image_name: collision-free (issue 27: "chair 1", "chair-1")
from harness.store import UnreadableRunFile, read_pairs, read_run_record

PAIRS_PER_CATEGORY = 4
SAMPLE_RULE = (
    f"at most {PAIRS_PER_CATEGORY} pairs per category and task: the first in pair-id order (the same "
    f"pairs in every run of a suite); per pair and method the output of the lowest seed"
)
# The scores printed under an output: the first of each group that the job has: fidelity inside the region,
# preservation outside it, then the text, mask or leakage score, so every grid shows the same kind of numbers.
MAIN_SCORES = (
    ("pattern_fidelity", "clip_i_roi", "lpips_inside"),
    ("psnr_outside", "ssim_outside", "lpips_outside", "oracle_preservation"),
    ("clip_t", "mask_iou", "pattern_leakage"),
)
# The grid's page budget: the label column plus the image columns stay inside 1200 px.
PAGE_PIXELS = 1100
LABEL_PIXELS = 120
GRID_CSS = """
table.imagegrid { border-collapse: collapse; margin-bottom: 1.2em; table-layout: fixed; }
table.imagegrid th { font-size: 0.72em; font-weight: normal; padding: 2px; vertical-align: bottom;
  overflow-wrap: anywhere; }
table.imagegrid td { vertical-align: top; text-align: center; font-size: 0.7em; padding: 2px; overflow-wrap: anywhere; }
table.imagegrid th.rowlabel, table.imagegrid td.rowlabel { text-align: left; }
table.imagegrid img { display: block; margin: auto; image-rendering: pixelated; }
table.imagegrid .scores { color: #333; line-height: 1.2; }
table.imagegrid tr.attention td { border-bottom: 1px solid #ddd; }
"""


@dataclass(frozen=True)
class PairImages:
    """A pair's input images as the run recorded them (RUN/pairs.parquet)."""

    pair_id: str
    category: str
    source_image: Path | None
    source_mask: Path | None
    target_image: Path | None
    target_mask: Path | None
    expected_image: Path | None
    source_object: str = ""
    target_object: str = ""


def recorded_pairs(run_dir: Path, only: Iterable[str] | None = None) -> dict[str, PairImages]:
    """pair_id → its images (the expected image of the synthetic sets when the manifest has one); ``only``: of
    these pair ids alone (a report shows a sample of a 100k-pair run)."""

    def path(value: Any) -> Path | None:
        return Path(value) if isinstance(value, str) and value else None

    pairs = {}
    for row in read_pairs(run_dir, only):
        pairs[str(row["pair_id"])] = PairImages(
            str(row["pair_id"]),
            str(row.get("category") or ""),
            path(row.get("source_image")),
            path(row.get("source_mask")),
            path(row.get("target_image")),
            path(row.get("target_mask")),
            path(row.get("expected_image")),
            str(row.get("source_object") or ""),
            str(row.get("target_object") or ""),
        )
    return pairs


def _recorded_models(run_dir: Path) -> dict[str, object]:
    """The run record's method -> model ({} when it has none or cannot be read: the report names that itself)."""
    try:
        models = read_run_record(run_dir).get("models")
    except UnreadableRunFile:
        return {}
    return models if isinstance(models, dict) else {}


def has_attention(method: str, recorded_models: Mapping[str, object] | None = None) -> bool:
    """Whether `method` computes an attention map: a method without a model (cut-and-paste) records the pasted
    region in its place, which is no attention and is not shown as one. ``recorded_models`` (the run record's
    method -> model, None for a method without one) answers without importing the method (and torch)."""
    if recorded_models and method in recorded_models:
        return recorded_models[method] is not None
    from clic.methods import method_class

    try:
        return bool(getattr(method_class(method), "needs_model", True))
    except Exception:  # a plugin that is not installed here: its artifact is shown as recorded
        return True


def image_width(n_images: int) -> int:
    """Pixel width of each image so that a row of `n_images` and its label fit the page (64 to 128 px)."""
    return int(np.clip((PAGE_PIXELS - LABEL_PIXELS) // max(n_images, 1) - 8, 64, 128))


def chosen_outputs(results: pd.DataFrame, per_category: int = PAIRS_PER_CATEGORY) -> pd.DataFrame:
    """One row per shown output: the job of each (category, task, pair, label) of the sample (see SAMPLE_RULE)."""
    jobs = results[results["artifact_image"].notna()] if "artifact_image" in results else results.iloc[0:0]
    if "status" in jobs:
        jobs = jobs[jobs["status"].fillna("ok").eq("ok")]
    jobs = jobs.drop_duplicates("job_id")
    if jobs.empty:
        return jobs.assign(label=pd.Series(dtype=object))
    jobs = jobs.assign(label=method_labels(jobs))
    firsts = (
        jobs.drop_duplicates(["category", "task", "pair_id"])
        .sort_values("pair_id")
        .groupby(["category", "task"], sort=False)
        .head(per_category)
    )
    jobs = jobs[jobs["pair_id"].isin(set(firsts["pair_id"]))]  # the few sampled pairs first, then the exact keys
    keep = set(zip(firsts["category"], firsts["task"], firsts["pair_id"]))
    jobs = jobs[[key in keep for key in zip(jobs["category"], jobs["task"], jobs["pair_id"])]]
    return jobs.sort_values(["seed", "settings", "job_id"]).drop_duplicates(["category", "task", "pair_id", "label"])


def job_scores(results: pd.DataFrame, job_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """job_id → {metric: value} of the given jobs (their ok, finite values)."""
    rows = results[results["job_id"].isin(set(job_ids)) & results["metric"].notna()]
    values = pd.to_numeric(rows["value"], errors="coerce")
    rows = rows.assign(value=values)[np.isfinite(values)]
    scores: dict[str, dict[str, float]] = {}
    for job_id, metric, value in zip(rows["job_id"], rows["metric"], rows["value"]):
        scores.setdefault(str(job_id), {})[str(metric)] = float(value)
    return scores


def scores_html(scores: Mapping[str, float]) -> str:
    """The main scores of one output, one per line ("psnr_outside 12.3")."""
    shown = [next(m for m in group if m in scores) for group in MAIN_SCORES if any(m in scores for m in group)]
    return "".join(f"<div>{html.escape(m)} {html.escape(format_number(scores[m]))}</div>" for m in shown)


class Thumbnails:
    """Thumbnails copied into OUT/images, each written once however many grids show it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.done: dict[Path, bool] = {}

    def cell(self, source: Path | None, name: str, alt: str, width: int, mask: Path | None = None) -> str:
        """An <img> of `source` (with `mask` outlined), or "" when there is no readable image."""
        if source is None:
            return ""
        dest = self.out / "images" / name
        if dest not in self.done:
            self.done[dest] = thumbnail(source, dest, mask)
        if not self.done[dest]:
            return ""
        return f'<img src="images/{html.escape(name)}" alt="{html.escape(alt)}" width="{width}" height="{width}">'

    def inputs(self, pair: PairImages | None, width: int) -> list[str]:
        """Cells of the pair's source and target (mask outlined) and expected image (when it has one)."""
        if pair is None:
            return []
        return [
            self.cell(
                pair.source_image,
                image_name(pair.pair_id, "source"),
                f"source of {pair.pair_id}",
                width,
                pair.source_mask,
            ),
            self.cell(
                pair.target_image,
                image_name(pair.pair_id, "target"),
                f"target of {pair.pair_id}",
                width,
                pair.target_mask,
            ),
            self.cell(
                pair.expected_image, image_name(pair.pair_id, "expected"), f"expected output of {pair.pair_id}", width
            ),
        ]

    def output(self, run_dir: Path, job: Any, kind: str, width: int, alt: str) -> str:
        artifact = getattr(job, f"artifact_{kind}", None)
        if not isinstance(artifact, str) or not artifact:
            return ""
        return self.cell(run_dir / artifact, image_name(job.job_id, kind), alt, width)


def _pair_label(pair_id: str, pair: PairImages | None, extra: str = "") -> str:
    objects = (
        f"<br>{html.escape(pair.source_object)} → {html.escape(pair.target_object)}"
        if pair is not None and (pair.source_object or pair.target_object)
        else ""
    )
    return f"<b>{html.escape(pair_id)}</b>{objects}{extra}"


def image_grids(
    run_dir: Path, results: pd.DataFrame, out: Path, labels: Sequence[str] = (), per_category: int = PAIRS_PER_CATEGORY
) -> dict[str, str]:
    """category → HTML of its grids (one table per task): a row per sampled pair, the columns
    source | target | expected | each method label (in the order of `labels`, then sorted)."""
    chosen = chosen_outputs(results, per_category)
    if chosen.empty:
        return {}
    recorded_models = _recorded_models(run_dir)
    writer = _GridWriter(
        run_dir=run_dir,
        pairs=recorded_pairs(run_dir, chosen["pair_id"].astype(str).unique()),
        scores=job_scores(results, chosen["job_id"].astype(str).tolist()),
        thumbs=Thumbnails(out),
        attention_methods={m: has_attention(m, recorded_models) for m in chosen["method"].unique()},
    )
    grids: dict[str, str] = {}
    for category, in_category in chosen.groupby("category", sort=True):
        tasks = sorted(in_category.groupby("task"), key=lambda item: item[0] != "transfer")
        grids[str(category)] = "\n".join(writer.task_table(str(task), in_task, labels) for task, in_task in tasks)
    return grids


@dataclass
class _GridWriter:
    """The HTML of one report's image grids: a table per (category, task), a row (and its attention row) per pair."""

    run_dir: Path
    pairs: Mapping[str, Any]
    scores: Mapping[str, Any]
    thumbs: Any
    attention_methods: Mapping[str, bool]

    def task_table(self, task: str, in_task: pd.DataFrame, labels: Sequence[str]) -> str:
        present = set(in_task["label"])
        columns = [label for label in dict.fromkeys(labels) if label in present] + sorted(present - set(labels))
        pair_ids = sorted(in_task["pair_id"].astype(str).unique())
        pairs = self.pairs
        with_expected = any(pairs.get(p) is not None and pairs[p].expected_image is not None for p in pair_ids)
        inputs = ["source (mask outline)", "target (mask outline)"] + (["expected"] if with_expected else [])
        width = image_width(len(inputs) + len(columns))
        head = "".join(f"<th>{html.escape(text)}</th>" for text in inputs + columns)
        rows = []
        for pair_id, pair_jobs in in_task.groupby("pair_id", sort=True):
            rows += self.pair_rows(str(pair_id), pair_jobs, columns, len(inputs), width)
        return (
            f'<h4>{html.escape(task)}</h4><table class="imagegrid"><colgroup>'
            f'<col style="width:{LABEL_PIXELS}px">'
            + f'<col style="width:{width + 6}px">'
            * (len(inputs) + len(columns))
            + f'</colgroup><thead><tr><th class="rowlabel">pair</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def pair_rows(
        self, pair_id: str, pair_jobs: pd.DataFrame, columns: list[str], n_inputs: int, width: int
    ) -> list[str]:
        """A pair's row of images (and, when some output has one, its row of attention maps)."""
        pair = self.pairs.get(pair_id)
        by_label = {job.label: job for job in pair_jobs.itertuples(index=False)}
        input_cells = self.thumbs.inputs(pair, width)[:n_inputs] or [""] * n_inputs
        cells = [f"<td>{cell}</td>" for cell in input_cells]
        attention_cells, any_attention = ["<td></td>"] * n_inputs, False
        for label in columns:
            job = by_label.get(label)
            if job is None:
                cells.append("<td>no output</td>")
                attention_cells.append("<td></td>")
                continue
            image = self.thumbs.output(self.run_dir, job, "image", width, f"{label} output for {pair_id}")
            cells.append(
                f'<td>{image}<div class="scores">{scores_html(self.scores.get(str(job.job_id), {}))}</div></td>'
            )
            attention = (
                self.thumbs.output(self.run_dir, job, "attention", width, f"attention map of {label}")
                if self.attention_methods.get(job.method)
                else ""
            )
            any_attention = any_attention or bool(attention)
            attention_cells.append(f"<td>{attention}</td>" if attention else "<td></td>")
        seed = pair_jobs["seed"].min()
        rows = [f'<tr><td class="rowlabel">{_pair_label(pair_id, pair, f"<br>seed {seed}")}</td>{"".join(cells)}</tr>']
        if any_attention:
            rows.append(
                f'<tr class="attention"><td class="rowlabel">attention maps of '
                f"{html.escape(pair_id)} (the learned token's cross-attention)</td>"
                f"{''.join(attention_cells)}</tr>"
            )
        return rows


def grid_note(results: pd.DataFrame, per_category: int = PAIRS_PER_CATEGORY) -> str:
    """The sentence that says which outputs the grids show and what is under them."""
    total = results.drop_duplicates(["category", "pair_id"]).shape[0] if not results.empty else 0
    rule = SAMPLE_RULE.replace(str(PAIRS_PER_CATEGORY), str(per_category), 1)
    groups = "; ".join(" or ".join(group) for group in MAIN_SCORES)
    return (
        f"Shown: {rule} (of {total} pairs in the run). Under each output its main scores (the first it has "
        f"of each: {groups}); masks are outlined in red; attention maps "
        f"only for methods that compute attention (cut-and-paste has none)."
    )
