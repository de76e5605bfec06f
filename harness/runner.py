"""Run a suite on Ray: learn each concept once, fan its transfers/generations/matches out, score, store.

Learn tasks return their concept folder; task jobs take that object ref as an argument, so Ray starts
a transfer as soon as its own concept is learned (a dependency, not a barrier). At most
``max_in_flight`` task jobs are submitted at once; finished ones are scored by metric actors (models
loaded once) and written by the driver right away, so a killed driver loses only in-flight jobs and a
rerun skips everything already written.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import math
import platform
import socket
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import store
from .jobs import (JobGraph, LearnNode, MethodRun, MetricInfo, ModelInfo, Pair, Plan, TaskJob, build_job_graph,
                   code_version, git_describe)

DEFAULT_RESOLUTION = 64


@dataclass
class RunSummary:
    run_dir: Path
    run_id: str
    total_jobs: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    not_applicable: int = 0
    learns_run: int = 0
    wall_seconds: float = 0.0
    work_seconds: float = 0.0  # learn + task + metric seconds summed over jobs
    overhead_share: float = 0.0
    node_ids: Counter = field(default_factory=Counter)

    @property
    def jobs_run(self) -> int:
        return self.done + self.failed


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def one_line(error: BaseException) -> str:
    """The last line of an error's message (Ray wraps task errors in a long traceback)."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


# ------------------------------------------------------------------------------------------ suite -> plan
def plan_from_suite(suite: Mapping[str, Any]) -> Plan:
    """The job-graph plan of a suite in its canonical dict form (``Suite.to_dict()``)."""
    from .metrics import metric_class

    methods = []
    for entry in suite["methods"]:
        presets = entry.get("presets") or [entry.get("preset")]
        for preset in presets:
            preset = preset or _default_preset(entry["name"])
            methods.append(MethodRun(entry["name"], preset, dict(entry.get("learn") or {})))
    transfer = dict(suite.get("transfer") or {})
    generate = dict(suite.get("generate") or {})
    match = dict(suite.get("match") or {})
    metrics = []
    for name in suite.get("metrics") or []:
        cls = metric_class(name)
        metrics.append(MetricInfo(name, cls.version, cls.scale, frozenset(cls.tasks),
                                  bool(getattr(cls, "group_metric", False))))
    return Plan(
        methods=methods, seeds=[int(s) for s in suite.get("seeds", [0])],
        t_starts=_as_list(transfer.pop("t_start", [10])), etas=_as_list(transfer.pop("eta", [1.0])),
        transfer_settings=transfer, generate_objects=list(generate.pop("objects", []) or []),
        generate_settings=generate, match_enabled=bool(match.pop("enabled", False)), match_settings=match,
        metrics=metrics, resolution=int(suite.get("resolution") or DEFAULT_RESOLUTION),
    )


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _default_preset(method: str) -> str:
    from clic.methods import method_class

    return method_class(method).default_preset


def model_for(method_name: str, model: str) -> str | None:
    """The model a method runs on: none for no-model methods, the inpainting variant where needed."""
    from clic.methods import method_class

    cls = method_class(method_name)
    if not cls.needs_model:
        return None
    return "tiny-inpaint" if cls.needs_inpainting and model == "tiny" else model


def describe_models(plan: Plan, model: str) -> dict[str, ModelInfo | None]:
    from clic.models import load_components

    infos: dict[str, ModelInfo] = {}
    by_method: dict[str, ModelInfo | None] = {}
    for run in plan.methods:
        model_id = model_for(run.name, model)
        if model_id is not None and model_id not in infos:
            components = load_components(model_id)
            infos[model_id] = ModelInfo(model_id, components.weights_hash, components.weights_label)
        by_method[run.name] = infos.get(model_id) if model_id else None
    return by_method


def method_tasks(plan: Plan) -> dict[str, frozenset[str]]:
    from clic.methods import method_class

    tasks: dict[str, frozenset[str]] = {}
    for run in plan.methods:
        method = method_class(run.name)()
        tasks[run.name] = frozenset(t for t in ("transfer", "generate", "match") if method.supports(t))
    return tasks


# ------------------------------------------------------------------------------------- worker code
def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _model_input(image_path: str, mask_path: str | None, resolution: int):
    from clic.io import load_image, load_mask, to_model_input

    image = load_image(image_path)
    mask = load_mask(mask_path, size=image.size) if mask_path else None
    return image, mask, to_model_input(image, mask, resolution)


def _as_float_image(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def learn_concept_task(node: LearnNode, concepts_root: str) -> dict[str, Any]:
    """Learn one concept into concepts/<concept_id> unless a complete folder is already there."""
    from clic.learn import ConceptSource
    from clic.methods.base import get_method
    from clic.models import load_components

    final = Path(concepts_root) / node.concept_id
    if store.concept_is_complete(final):
        return {"folder": str(final), "seconds": 0.0, "learned": False, "node_id": _node_id()}
    if node.source_mask is None:
        raise ValueError(f"{node.source_image}: no source mask (automatic source masks are not run by the harness)")
    start = time.perf_counter()
    method = get_method(node.method)
    _, _, (image, mask, _) = _model_input(node.source_image, node.source_mask, node.resolution)
    components = load_components(node.model.model_id) if node.model else None
    temp = store.temp_sibling(final)
    method.learn(components, ConceptSource(image, mask, node.object_word), preset=node.preset,
                 overrides=node.learn_overrides, seed=node.seed, out_dir=temp, progress=False)
    store.publish_folder(temp, final)
    return {"folder": str(final), "seconds": time.perf_counter() - start, "learned": True, "node_id": _node_id()}


def _save_map(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    array = np.asarray(array, dtype=np.float32)
    if array.max() > 0:
        array = array / array.max()
    Image.fromarray((array.clip(0, 1) * 255).round().astype(np.uint8), mode="L").save(path)


def run_task_job(job: TaskJob, concept: Mapping[str, Any], model_id: str | None, resolution: int,
                 run_dir: str) -> dict[str, Any]:
    """Run one task job on its learned concept; write artifacts; return the metric sample and timings."""
    from PIL import Image

    from clic.concept import LearnedConcept
    from clic.io import from_model_output
    from clic.methods.base import get_method
    from clic.models import load_components
    from .metrics.base import Sample

    start = time.perf_counter()
    method = get_method(job.method)
    learned = LearnedConcept.load(concept["folder"])
    # Fresh components per job: applying a concept mutates them (tokens, attention processors).
    components = load_components(model_id) if model_id else None
    out = store.artifact_dir(run_dir, job.job_id)
    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, str] = {}
    sample = Sample(job_id=job.job_id, task=job.task, object_word=job.object_word, group=job.group)
    source, source_mask, _ = _model_input(job.source_image, job.source_mask, resolution)
    sample.source_image = _as_float_image(source)
    sample.source_mask = source_mask
    overrides = {k: v for k, v in job.settings.items() if k not in ("learn", "object")}

    if job.task in ("transfer", "match"):
        target, target_mask, (image, mask, placement) = _model_input(job.target_image, job.target_mask, resolution)
        sample.target_image = _as_float_image(target)
        sample.target_mask = target_mask
        if job.target_mask_gt:
            from clic.io import load_mask

            sample.gt_mask = load_mask(job.target_mask_gt, size=target.size)
        if job.expected_image:
            from clic.io import load_image

            sample.expected_image = _as_float_image(load_image(job.expected_image).resize(target.size))
    if job.task == "transfer":
        result = method.transfer(components, learned, image, mask[0], job.object_word, preset=job.preset,
                                 overrides=overrides, seed=job.seed)
        edited = from_model_output(result.image, placement)
        sample.output_image = _as_float_image(edited)
        edited.save(out / "edited.png")
        _save_map(result.attention.detach().cpu().numpy(), out / "attention.png")
        Image.fromarray(target_mask.astype(np.uint8) * 255).save(out / "mask.png")
        artifacts = {"artifact_image": "edited.png", "artifact_attention": "attention.png", "artifact_mask": "mask.png"}
    elif job.task == "generate":
        result = method.generate(components, learned, job.object_word, preset=job.preset, overrides=overrides,
                                 seed=job.seed)
        first = result.images[0].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
        sample.output_image = first.astype(np.float32)
        sample.prompt = result.prompt
        Image.fromarray((first * 255).round().astype(np.uint8)).save(out / "edited.png")
        artifacts = {"artifact_image": "edited.png"}
        if getattr(result, "attention", None) is not None:
            _save_map(result.attention[0].detach().cpu().numpy(), out / "attention.png")
            artifacts["artifact_attention"] = "attention.png"
    else:  # match
        result = method.match(components, learned, image, job.object_word, preset=job.preset,
                              overrides=overrides, seed=job.seed)
        from clic.io import mask_from_model_output

        sample.predicted_mask = mask_from_model_output(result.mask, placement)
        Image.fromarray(sample.predicted_mask.astype(np.uint8) * 255).save(out / "mask.png")
        artifacts = {"artifact_mask": "mask.png"}
    prefix = Path(store.ARTIFACTS_DIR) / job.job_id
    artifact_paths = {key: str(prefix / name) for key, name in artifacts.items()}
    losses = Path(concept["folder"]) / "losses.csv"
    if losses.is_file():
        artifact_paths["artifact_losses"] = str(Path(store.CONCEPTS_DIR) / job.concept_id / losses.name)
    return {"sample": sample, "artifacts": artifact_paths, "task_seconds": time.perf_counter() - start,
            "learn_seconds": float(concept["seconds"]), "node_id": _node_id()}


class MetricScorer:
    """Holds every requested metric (models loaded once) and scores batches of samples."""

    def __init__(self, names: Sequence[str], allow_random: bool, options: Mapping[str, Any]) -> None:
        from .metrics import build_metric
        from .metrics.base import MetricSettings

        settings = MetricSettings(allow_random=allow_random, options=dict(options))
        self.metrics = {name: build_metric(name, settings) for name in names}

    def weights(self) -> dict[str, str]:
        return {name: metric.weights for name, metric in self.metrics.items()}

    def score(self, samples: list) -> list[dict[str, Any]]:
        """Per sample: {"values": [(metric, value name, value)], "seconds": share of the batch time}."""
        start = time.perf_counter()
        values: list[list[tuple[str, str, float]]] = [[] for _ in samples]
        for name, metric in self.metrics.items():
            if getattr(metric, "group_metric", False):
                continue
            for index, scored in enumerate(metric.compute(samples)):
                values[index].extend((name, v.name, float(v.value)) for v in scored)
        share = (time.perf_counter() - start) / max(len(samples), 1)
        return [{"values": v, "seconds": share} for v in values]

    def score_group(self, name: str, samples: list) -> list[tuple[str, str, float]]:
        return [(name, v.name, float(v.value)) for v in self.metrics[name].compute_group(samples)]


# ------------------------------------------------------------------------------------------- driver
def _connect(address: str | None, num_cpus: int | None) -> None:
    import os

    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def _base_row(job: TaskJob, run_id: str, models: Mapping[str, ModelInfo | None]) -> dict[str, Any]:
    model = models.get(job.method)
    settings = dict(job.settings)
    return {
        "run_id": run_id, "job_id": job.job_id, "concept_id": job.concept_id, "task": job.task,
        "pair_id": job.pair_id, "category": job.category, "method": job.method, "preset": job.preset,
        "seed": job.seed, "settings": store.canonical_json(settings), "t_start": job.t_start, "eta": job.eta,
        "object_word": job.object_word, "model_id": model.model_id if model else None,
        "weights_hash": model.weights_hash if model else None, "weights_label": model.weights_label if model else None,
        "code_version": code_version(), "value": math.nan,
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "ray", "transformers", "open_clip", "pyarrow", "pandas"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            continue
    return versions


def execute(suite: Mapping[str, Any], pairs: Sequence[Pair], run_dir: str | Path, *,
            address: str | None = None, num_cpus: int | None = None, max_in_flight: int | None = None,
            retry_failed: bool = False, allow_random_metrics: bool = False, quiet: bool = False) -> RunSummary:
    """Run the jobs of ``suite`` over ``pairs`` that ``run_dir`` has not finished yet."""
    import ray
    from tqdm import tqdm

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    started, start_clock = now_iso(), time.perf_counter()
    plan = plan_from_suite(suite)
    model = str(suite.get("model") or "tiny")
    models = describe_models(plan, model)
    graph: JobGraph = build_job_graph(pairs, plan, models, method_tasks(plan))
    run_id = uuid.uuid4().hex[:12]
    summary = RunSummary(run_dir=run_dir, run_id=run_id, total_jobs=len(graph.jobs))

    finished = store.finished_job_ids(run_dir, include_failed=not retry_failed)
    todo = [job for job in graph.jobs if job.job_id not in finished]
    summary.skipped = len(graph.jobs) - len(todo)
    for job in [j for j in todo if j.status == store.STATUS_NOT_APPLICABLE]:
        store.write_job_results(run_dir, job.job_id, [{**_base_row(job, run_id, models), "status": job.status,
                                                       "error": job.reason, "finished_at": now_iso()}])
        summary.not_applicable += 1
    todo = [job for job in todo if job.status != store.STATUS_NOT_APPLICABLE]

    _connect(address, num_cpus)
    resources = dict(suite.get("resources") or {})
    task_options = {"num_cpus": float(resources.get("num_cpus", 1)), "num_gpus": float(resources.get("num_gpus", 0)),
                    "max_retries": int(suite.get("max_retries", 2)), "retry_exceptions": False}
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    slots = max(1, int(cluster_cpus // max(task_options["num_cpus"], 1e-9)))
    max_in_flight = max_in_flight or 2 * cluster_cpus
    learn_remote = ray.remote(learn_concept_task).options(**task_options)
    task_remote = ray.remote(run_task_job).options(**task_options)
    metric_names = [m.name for m in plan.metrics]
    metric_info = {m.name: m for m in plan.metrics}
    scorer = ray.remote(MetricScorer).options(num_cpus=float(resources.get("metric_cpus", 0)),
                                              num_gpus=float(resources.get("metric_gpus", 0))).remote(
        metric_names, allow_random_metrics, dict(suite.get("metric_options") or {}))
    metric_weights: dict[str, str] = ray.get(scorer.weights.remote()) if metric_names else {}

    # Group metrics need every member of a group; only groups run whole in this run are scored.
    group_metrics = [m.name for m in plan.metrics if m.group_metric]
    group_size = Counter(job.group for job in graph.jobs if job.group)
    group_todo = Counter(job.group for job in todo if job.group)
    complete_groups = {g for g, n in group_todo.items() if n == group_size[g]}
    held: dict[str, list[tuple[TaskJob, dict, list]]] = defaultdict(list)

    concepts_root = str(run_dir / store.CONCEPTS_DIR)
    learn_refs: dict[str, Any] = {}
    pending = list(todo)
    in_flight: dict[Any, TaskJob] = {}
    progress = tqdm(total=len(todo), disable=quiet, unit="job", desc="jobs")

    def show() -> None:
        progress.set_postfix(done=summary.done, failed=summary.failed, skipped=summary.skipped, refresh=False)

    def record(job: TaskJob, rows: list[dict[str, Any]], failed: bool) -> None:
        store.write_job_results(run_dir, job.job_id, rows)
        summary.failed += failed
        summary.done += not failed
        summary.work_seconds += sum(float(rows[0].get(k) or 0.0) for k in ("learn_seconds", "task_seconds", "metric_seconds"))
        progress.update(1)
        show()

    def ok_rows(job: TaskJob, output: dict, values: list[tuple[str, str, float]], metric_seconds: float) -> list[dict]:
        base = {**_base_row(job, run_id, models), **output["artifacts"], "status": store.STATUS_OK,
                "learn_seconds": output["learn_seconds"], "task_seconds": output["task_seconds"],
                "metric_seconds": metric_seconds, "finished_at": now_iso()}
        if not values:
            return [base]
        return [{**base, "metric": value_name, "value": value, "metric_version": metric_info[name].version,
                 "metric_scale": metric_info[name].scale, "metric_weights": metric_weights.get(name)}
                for name, value_name, value in values]

    def failed_row(job: TaskJob, error: BaseException) -> list[dict]:
        return [{**_base_row(job, run_id, models), "status": store.STATUS_FAILED, "error": one_line(error),
                 "finished_at": now_iso()}]

    while pending or in_flight:
        while pending and len(in_flight) < max_in_flight:
            job = pending.pop(0)
            node = graph.learns[job.concept_id]
            if job.concept_id not in learn_refs:
                learn_refs[job.concept_id] = learn_remote.remote(node, concepts_root)
            ref = task_remote.remote(job, learn_refs[job.concept_id], node.model.model_id if node.model else None,
                                     node.resolution, str(run_dir))
            in_flight[ref] = job
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        more, _ = ray.wait([r for r in in_flight if r not in ready], num_returns=len(in_flight) - len(ready), timeout=0)
        outputs: list[tuple[TaskJob, dict]] = []
        for ref in ready + more:
            job = in_flight.pop(ref)
            try:
                output = ray.get(ref)
            except Exception as error:  # a failing job is recorded and the run goes on
                record(job, failed_row(job, error), failed=True)
                continue
            summary.node_ids[output["node_id"]] += 1
            outputs.append((job, output))
        if not outputs:
            continue
        scored = ray.get(scorer.score.remote([o["sample"] for _, o in outputs])) if metric_names else \
            [{"values": [], "seconds": 0.0}] * len(outputs)
        for (job, output), result in zip(outputs, scored):
            if job.group in complete_groups and group_metrics:
                held[job.group].append((job, output, result))
                if len(held[job.group]) < group_size[job.group]:
                    continue
                members = sorted(held.pop(job.group), key=lambda item: item[0].job_id)
                samples = [item[1]["sample"] for item in members]
                group_values = [v for name in group_metrics for v in ray.get(scorer.score_group.remote(name, samples))]
                # The group's values are stored once, on its first member, so they are not counted twice.
                members[0][2]["values"].extend(group_values)
                for member_job, member_output, member_result in members:
                    record(member_job, ok_rows(member_job, member_output, member_result["values"],
                                               member_result["seconds"]), failed=False)
            else:
                record(job, ok_rows(job, output, result["values"], result["seconds"]), failed=False)
    progress.close()

    summary.learns_run = sum(_learned_now(ref) for ref in learn_refs.values())
    summary.wall_seconds = time.perf_counter() - start_clock
    method_time = summary.work_seconds / slots
    summary.overhead_share = max(0.0, (summary.wall_seconds - method_time) / summary.wall_seconds) \
        if summary.wall_seconds > 0 and summary.jobs_run else 0.0
    previous = store.read_run_manifest(run_dir)
    store.write_run_manifest(run_dir, {
        "run_id": run_id, "suite": dict(suite), "code_version": code_version(), "git": git_describe(),
        "versions": _versions(), "host": socket.gethostname(), "started_at": started, "finished_at": now_iso(),
        "models": {m: (info.__dict__ if info else None) for m, info in models.items()},
        "metric_weights": metric_weights,
        "counts": {"jobs": summary.total_jobs, "done": summary.done, "skipped": summary.skipped,
                   "failed": summary.failed, "not_applicable": summary.not_applicable,
                   "learns_run": summary.learns_run},
        "learns_total": int((previous.get("learns_total") or 0) + summary.learns_run),
        "nodes": dict(summary.node_ids),
        "timing": {"wall_seconds": summary.wall_seconds, "work_seconds": summary.work_seconds,
                   "worker_slots": slots, "overhead_share": summary.overhead_share},
    })
    ray.kill(scorer)
    return summary


def _learned_now(learn_ref: Any) -> bool:
    """Whether a (finished) learn task learned its concept rather than finding it in the cache."""
    import ray

    try:
        return bool(ray.get(learn_ref)["learned"])
    except Exception:  # a failed learn: its jobs are already recorded as failed
        return False


# -------------------------------------------------------------------------------------- entry points
def load_pairs(suite: Mapping[str, Any], suite_path: Path, allow_outside: bool = False) -> list[Pair]:
    """The good rows of the suite's manifests (bad rows printed, one line each), up to ``limit_pairs``."""
    from .manifest import load_manifest

    manifests = suite.get("manifests") or [suite["manifest"]]
    limit = suite.get("limit_pairs")
    pairs: list[Pair] = []
    for manifest in manifests:
        path = Path(manifest) if Path(manifest).is_absolute() else (suite_path.parent / manifest)
        if not path.exists():
            path = Path(manifest)
        report = load_manifest(path, allow_outside=allow_outside)
        for problem in [*report.manifest_problems, *report.problems]:
            print(f"skipped: {problem}", file=sys.stderr)
        specs = [Pair.from_spec(spec) for spec in report.rows]
        pairs.extend(specs[:limit] if limit else specs)
    return pairs


def run_suite(suite_path: str | Path, out: str | Path | None = None, address: str | None = None, *,
              num_cpus: int | None = None, max_in_flight: int | None = None, retry_failed: bool = False,
              allow_random_metrics: bool = False, allow_outside: bool = False, quiet: bool = False) -> RunSummary:
    from .suite import load_suite

    suite_path = Path(suite_path)
    suite = load_suite(suite_path).to_dict()
    run_dir = Path(out) if out else Path("runs") / str(suite.get("name") or suite_path.stem)
    pairs = load_pairs(suite, suite_path, allow_outside)
    return execute(suite, pairs, run_dir, address=address, num_cpus=num_cpus, max_in_flight=max_in_flight,
                   retry_failed=retry_failed, allow_random_metrics=allow_random_metrics, quiet=quiet)


def run_main(args: argparse.Namespace) -> int:
    summary = run_suite(args.suite, args.out, args.address, num_cpus=args.num_cpus,
                        max_in_flight=args.max_in_flight, retry_failed=args.retry_failed,
                        allow_random_metrics=args.allow_random_metrics, allow_outside=args.allow_outside,
                        quiet=args.quiet)
    print(f"{summary.total_jobs} jobs: {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
          f"(already finished), {summary.not_applicable} not applicable; {summary.learns_run} concepts learned; "
          f"{summary.wall_seconds:.1f} s wall, harness overhead {summary.overhead_share:.0%}")
    print(f"results: {summary.run_dir / store.RESULTS_DIR} (read with harness.store.read_results)")
    if not args.no_report:
        try:
            report = importlib.import_module("harness.report")
            write_report = getattr(report, "write_report")
        except (ImportError, AttributeError):
            print("report: harness.report.write_report is not available; skipped (run `clic-bench report` later)")
        else:
            print(f"report: {write_report(summary.run_dir)}")
    return 1 if summary.failed else 0
