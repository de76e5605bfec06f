"""`clic-bench`: run suites, validate and build manifests, report, compare, pack and score user studies.

Each subcommand's handler lives in the module that owns the work and is imported only when that
subcommand runs, so `clic-bench validate` never pays for importing torch or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from .errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]  # UsageError is re-exported for callers of the CLI


def _handler(target: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        module_name, _, func = target.partition(":")
        return getattr(importlib.import_module(module_name), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clic-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_analyse_commands(sub)
    _add_input_commands(sub)
    _add_study_commands(sub)
    _add_perf_command(sub)
    return parser


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """`run` and `doctor`."""
    p = sub.add_parser("run", help="run a suite file (only missing or changed jobs run)")
    p.add_argument("suite", help="suite file (benchmarks/*.yaml)")
    p.add_argument("--out", default=None, help="output root (default: runs/<suite name>)")
    p.add_argument("--address", default=None, help="Ray address of an existing cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    p.add_argument("--max-in-flight", type=int, default=None, help="bound on tasks submitted at once")
    p.add_argument("--retry-failed", action="store_true", help="run again the jobs recorded as failed")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="if another run holds the output folder, exit (one line naming it) instead of waiting",
    )
    p.add_argument(
        "--allow-random-metrics",
        action="store_true",
        help="score with tiny random-weight CLIP/LPIPS when real weights are missing (labelled)",
    )
    p.add_argument("--allow-outside", action="store_true", help="allow manifest paths outside its folder")
    p.add_argument(
        "--allow-other-suite",
        action="store_true",
        help="run into an output folder that holds another suite's results (their rows stay apart)",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite key, checked as the file is (YAML value; repeatable), e.g. "
        "--set transfer.t_start=[5,10,15] --set model=PATH --set resources.num_gpus=0.5",
    )
    p.set_defaults(func=_handler("harness.execute.runner:run_main"))

    p = sub.add_parser(
        "doctor", help="every model and metric weight a suite needs: found where, or missing and how to get it"
    )
    p.add_argument("suite", nargs="?", default=None, help="suite file (default: benchmarks/smoke.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite key, as for run")
    p.set_defaults(func=_handler("harness.plan.doctor:doctor_main"))


def _add_analyse_commands(sub: argparse._SubParsersAction) -> None:
    """`report` and `compare`."""
    p = sub.add_parser("report", help="write tables and the HTML report of a run folder")
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--reference",
        default=None,
        help='method, or method label ("clic/paper no_att"), the paired differences are taken against (default: clic)',
    )
    p.add_argument("--out", default=None, help="report folder (default: RUN/report)")
    p.set_defaults(func=_handler("harness.analyse.report:report_main"))

    p = sub.add_parser("compare", help="regression gate: paired deltas of RUN_B against RUN_A")
    p.add_argument("run_a", help="baseline run folder (the last good run)")
    p.add_argument("run_b", help="candidate run folder")
    p.add_argument("--metric", action="append", default=None, help="metric to gate on (repeatable; default all)")
    p.add_argument("--max-drop", type=float, default=0.0, help="largest tolerated drop of the mean")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired test")
    p.add_argument(
        "--html",
        default=None,
        metavar="OUT",
        help="also write the comparison page OUT/index.html (A and B side by side, worst pairs' images)",
    )
    p.set_defaults(func=_handler("harness.analyse.compare_page:compare_main"))


def _add_input_commands(sub: argparse._SubParsersAction) -> None:
    """`validate` and `manifest from-folder | synth | preview`."""
    p = sub.add_parser("validate", help="check a manifest and print one line per bad row")
    p.add_argument("manifest")
    p.add_argument("--allow-outside", action="store_true", help="allow paths outside the manifest's folder")
    p.set_defaults(func=_handler("harness.plan.manifest:validate_main"))

    p = sub.add_parser("manifest", help="build manifests")
    msub = p.add_subparsers(dest="manifest_command", required=True)
    q = msub.add_parser("from-folder", help="build a manifest from the folder convention in the README")
    q.add_argument("folder")
    q.add_argument("--out", default=None, help="manifest path (default: FOLDER/manifest.parquet)")
    q.set_defaults(func=_handler("harness.plan.folder:from_folder_main"))
    q = msub.add_parser("synth", help="render a procedural benchmark set with exact ground truth")
    q.add_argument(
        "--set", dest="set_name", default="all", choices=["furniture", "jewelry", "building", "kitchenware", "all"]
    )
    q.add_argument("--pairs", type=int, default=8, help="pairs per category")
    q.add_argument("--size", type=int, default=128, help="image side in pixels")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=_handler("harness.synth.cli:synth_main"))
    q = msub.add_parser("preview", help="draw a contact sheet PNG of a manifest")
    q.add_argument("manifest")
    q.add_argument("--out", default=None, help="PNG path (default: beside the manifest)")
    q.set_defaults(func=_handler("harness.synth.cli:preview_main"))


def _add_study_commands(sub: argparse._SubParsersAction) -> None:
    """`pack` and `score` (the user study)."""
    p = sub.add_parser("pack", help="build a blinded user-study pack from a run")
    p.add_argument("run")
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--raters", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_handler("harness.analyse.study:pack_main"))

    p = sub.add_parser("score", help="score user-study answers against a pack key")
    p.add_argument("key", help="the pack's key file")
    p.add_argument("answers", nargs="+", help="exported answer files (JSON or CSV)")
    p.add_argument("--out", default=None, help="folder for the Markdown/CSV tables")
    p.set_defaults(func=_handler("harness.analyse.study_scores:score_main"))


def _add_perf_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="run the performance benchmarks and write their table")
    p.add_argument("--out", default="runs/perf")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="sections to run (default all): steps cached_work metrics harness scaling results ...",
    )
    p.add_argument(
        "--arch",
        choices=("tiny", "sd15", "sd21"),
        default="tiny",
        help="model of the steps section: tiny, or a real SD architecture with random weights "
        "(then only steps runs unless --only says more)",
    )
    p.add_argument(
        "--scale-jobs",
        nargs="+",
        type=int,
        default=None,
        help="job counts of the scale section (--only scale; default 1000 10000 100000: above 1000 completed from the 1000-job run, see benchmarks/perf/README.md)",
    )
    p.set_defaults(func=_handler("benchmarks.perf.__main__:perf_main"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .guards import check_args

        check_args(args)  # numbers, output folders, addresses: one line before any work
        return int(args.func(args) or 0)
    except UsageError as err:  # one line per problem (preflight may find several)
        for line in str(err).splitlines() or [type(err).__name__]:
            print(f"clic-bench: error: {line}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"clic-bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: results are written job by job, so nothing finished is lost
        stopped = _stop_started_cluster()
        print(
            "clic-bench: error: interrupted (Ctrl-C): what finished is kept; run it again to resume"
            + ("; the Ray cluster this run started was stopped" if stopped else ""),
            file=sys.stderr,
        )
        return 130


def _stop_started_cluster() -> bool:
    """Stop the local Ray cluster a `run` started (only if the runner was imported, i.e. a run began)."""
    runner = sys.modules.get("harness.execute.runner")
    if runner is None:
        return False
    try:
        return bool(runner.stop_started_cluster())
    except KeyboardInterrupt:  # a second Ctrl-C while stopping: Ray's atexit handler finishes the job
        return False


if __name__ == "__main__":
    # `python -m harness.cli`: run the imported module's main, so the handlers' UsageError (harness.cli's)
    # is the class caught there, not a second copy defined in __main__.
    from harness.cli import main as package_main

    sys.exit(package_main())
