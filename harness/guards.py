"""Checks `clic-bench` runs on its command line before any work, so a mistake is one line, not a hang.

Called once from :func:`harness.cli.main` with the parsed arguments. Every numeric option must be finite and
in its documented range; an ``--out`` must be a folder that can be written (not an existing file); a run's
``--address`` must answer within :data:`ADDRESS_TIMEOUT_SECONDS` (Ray itself retries for minutes); the run
folder of ``report``, ``pack`` and ``compare`` must exist.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from clic.cli_checks import MAX_SEED, OptionError
from clic.cli_checks import check_number as clic_check_number

from .errors import UsageError

ADDRESS_TIMEOUT_SECONDS = 5.0
RAY_DEFAULT_PORT = 6379


def check_number(
    value: float | None,
    option: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> None:
    """Finite and within [minimum, maximum] (open interval with ``exclusive``); None (the default) passes.
    The rule is clic's (:func:`clic.cli_checks.check_number`); only the error is the harness's."""
    try:
        clic_check_number(value, option, minimum=minimum, maximum=maximum, exclusive=exclusive)
    except OptionError as err:
        raise UsageError(str(err)) from None


def check_output_folder(out: str | None, option: str = "--out", *, remote_ok: bool = False) -> None:
    """``out`` is a folder or can become one, and a file can be written there (checked before any work);
    with ``remote_ok`` (a run's ``--out``) a URI of object storage whose scheme can be opened passes too."""
    if out is None:
        return
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", out)
    if scheme and scheme.group(1).lower() != "file" and remote_ok:  # object storage: harness.remote_folder
        from .remote_folder import check_remote_folder

        check_remote_folder(out, option)
        return
    if scheme:  # Path("s3://b/x") is a local folder named "s3:": refused instead of written there
        raise UsageError(
            f"{option}: {out}: only `clic-bench run` writes to object storage ({scheme.group(1)}://); "
            f"give a local folder"
            if scheme.group(1).lower() != "file"
            else f"{option}: {out}: give the folder as a path, not a file:// URL"
        )
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {out} is an existing file, not a folder")
    # Nothing is created here (a refused run leaves no folder): the folder, or its nearest existing
    # ancestor, must take a file.
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option}: {out} cannot be created: {existing} is a file")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"{option}: {out} is not a writable folder ({err.strerror or type(err).__name__})") from None


def check_output_file(out: str | None, option: str = "--out") -> None:
    """``out`` names a file to write: not an existing folder, its folder writable."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"{option}: {out} is an existing folder, not a file")
    check_output_folder(str(path.parent) if str(path.parent) else ".", option)


def check_default_report_folder(folder: Path) -> None:
    """RUN/report can be written (a read-only run folder is said as such, with the way out: --out)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(
            f"{folder}: cannot write the report there ({err.strerror or type(err).__name__}); "
            f"write it elsewhere with --out DIR"
        ) from None


def _is_run_folder(folder: Path) -> bool:
    return (folder / "run.json").is_file() or ((folder / "results").is_dir() and (folder / "pairs.parquet").is_file())


def _is_report_folder(folder: Path) -> bool:
    return (folder / "index.html").is_file() and (folder / "summary.md").is_file()


def check_pack_folder(run: str, out: str) -> None:
    """A user-study pack goes outside any run folder and report: beside results/, run.json and summary.md (which
    name the methods) the study is no longer blind, and inside a report it would overwrite its index.html."""
    target, run_folder = Path(out).resolve(), Path(run).resolve()
    for folder in (target, *target.parents):
        if folder == run_folder or _is_run_folder(folder):
            raise UsageError(
                f"--out: {out} is inside the run folder {folder}, whose results, run.json and reports "
                f"name the methods (the study would not be blind): write the pack outside it"
            )
        if _is_report_folder(folder):
            raise UsageError(
                f"--out: {out} is inside the report {folder} (its index.html would be overwritten): "
                f"write the pack outside it"
            )


def _is_uri(location: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", location))


def check_run_location(run: str, option: str = "RUN") -> None:
    """A run folder to read: a local folder, or a prefix on object storage whose scheme's package is installed
    (whether the prefix holds a run is found when it is read)."""
    if _is_uri(run):
        check_output_folder(run, option, remote_ok=True)
    else:
        check_run_folder(run, option)


def check_run_folder(run: str, option: str = "RUN") -> None:
    path = Path(run)
    if not path.exists():
        raise UsageError(f"{run}: no such run folder")
    if not path.is_dir():
        raise UsageError(f"{run}: not a run folder (a file)")


def check_address(address: str | None, timeout: float = ADDRESS_TIMEOUT_SECONDS) -> None:
    """A Ray address ``host:port``, ``ray://host:port`` or ``http://host:port`` must accept a connection
    within ``timeout`` seconds; ``auto`` and ``local`` are left to Ray."""
    if not address or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host = parsed.hostname
    try:
        port = parsed.port or RAY_DEFAULT_PORT
    except ValueError:
        raise UsageError(f"--address: {address} has no valid port") from None
    if not host:
        raise UsageError(f"--address: {address} is not host:port, ray://host:port or auto")
    from .plan.remote import unreachable

    problem = unreachable(host, port, timeout)
    if problem == "unknown host name":
        raise UsageError(f"--address: {address}: unknown host {host!r}")
    if problem is not None:
        raise UsageError(f"--address: {address}: no Ray cluster answers at {host}:{port} ({problem})")


def check_args(args: argparse.Namespace) -> None:
    """The checks of one parsed `clic-bench` command line (see the module docstring)."""
    command = getattr(args, "command", None)
    if command == "run":
        check_number(args.max_in_flight, "--max-in-flight", minimum=1)
        check_number(args.num_cpus, "--num-cpus", minimum=1)
        check_address(args.address)  # --out is checked by the run's preflight, beside every other problem,
        if args.out and _is_uri(args.out):  # but a URI's package at once
            check_output_folder(args.out, remote_ok=True)
    elif command == "compare":
        check_number(args.max_drop, "--max-drop", minimum=0.0)
        check_number(args.alpha, "--alpha", minimum=0.0, maximum=1.0, exclusive=True)
        check_run_location(args.run_a, "RUN_A")
        check_run_location(args.run_b, "RUN_B")
    elif command == "report":
        check_run_location(args.run)
        if args.out is None and not _is_uri(args.run):
            check_default_report_folder(Path(args.run) / "report")
        check_output_folder(args.out)
    elif command == "pack":
        check_run_location(args.run)
        check_number(args.pairs, "--pairs", minimum=1)
        check_number(args.raters, "--raters", minimum=1)
        check_number(args.seed, "--seed", minimum=0, maximum=MAX_SEED)
        check_output_folder(args.out)
        if not _is_uri(args.run):
            check_pack_folder(args.run, args.out)
    elif command == "score":
        check_output_folder(args.out)
    elif command == "manifest" and getattr(args, "manifest_command", None) == "synth":
        check_output_folder(args.out)  # its numbers are checked by harness.synth.cli
    elif command == "manifest" and getattr(args, "manifest_command", None) in ("from-folder", "preview"):
        check_output_file(getattr(args, "out", None))
