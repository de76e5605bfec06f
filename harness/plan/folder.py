"""The folder convention of ``clic-bench manifest from-folder`` (see :mod:`harness.plan.manifest`): one folder per
category, one per pair, files named by their column."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .locations import escapes_folder
from .manifest import load_manifest, write_manifest

# ------------------------------------------------------------------------------- folder convention

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# File stem in a pair folder -> manifest column.
FOLDER_FILES = {
    "source": "source_image",
    "source_mask": "source_mask",
    "target": "target_image",
    "target_mask": "target_mask",
    "target_mask_gt": "target_mask_gt",
    "expected": "expected_image",
}
META_KEYS = (
    "source_object",
    "target_object",
    "concept",
    "tags",
    "source_part",
    "target_part",
    "pattern",
    "pattern_params",
)


class FolderError(ValueError):
    """The folder does not follow the convention; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


def _read_meta(path: Path, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{path}: not readable JSON ({' '.join(str(err).split())})")
        return {}
    if not isinstance(meta, dict):
        problems.append(f"{path}: expected a JSON object, got {type(meta).__name__}")
        return {}
    for key in sorted(set(meta) - set(META_KEYS)):
        problems.append(f"{path}: unknown key {key!r} (known: {', '.join(META_KEYS)})")
    tags = meta.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        problems.append(f"{path}: 'tags' must be a list of strings")
    for key in ("source_object", "target_object", "concept", "source_part", "target_part", "pattern"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            problems.append(f"{path}: {key!r} must be a string")
    return {k: v for k, v in meta.items() if k in META_KEYS}


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _pair_files(pair_dir: Path, problems: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for entry in sorted(pair_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        column = FOLDER_FILES.get(entry.stem)
        if column is None:
            problems.append(f"{entry}: unexpected image file (expected {', '.join(s + '.*' for s in FOLDER_FILES)})")
        elif column in files:
            problems.append(f"{pair_dir}: two files for {entry.stem}: {files[column].name} and {entry.name}")
        else:
            files[column] = entry
    for stem, column in (("source", "source_image"), ("target", "target_image")):
        if column not in files:
            problems.append(f"{pair_dir}: missing {stem}.png (or .jpg, .jpeg, .webp, .bmp, .tif, .tiff)")
    return files


def scan_folder(
    folder: str | os.PathLike[str], manifest_dir: str | os.PathLike[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Manifest rows for a folder that follows the convention, and one line per problem found."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    relative_to = Path(manifest_dir) if manifest_dir is not None else root
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    pair_dirs: dict[str, Path] = {}
    for category_dir in _visible_dirs(root):
        category = category_dir.name
        defaults = _read_meta(category_dir / "meta.json", problems)
        for pair_dir in _visible_dirs(category_dir):
            pair_id = pair_dir.name
            if pair_id in pair_dirs:
                problems.append(
                    f"{pair_dir}: pair_id {pair_id!r} also used by {pair_dirs[pair_id]} (pair folder names must be unique)"
                )
                continue
            pair_dirs[pair_id] = pair_dir
            files = _pair_files(pair_dir, problems)
            meta = {**defaults, **_read_meta(pair_dir / "meta.json", problems)}
            params = meta.get("pattern_params")
            row: dict[str, Any] = {
                "pair_id": pair_id,
                "category": category,
                "source_object": meta.get("source_object") or category,
                "target_object": meta.get("target_object") or category,
                "concept": meta.get("concept"),
                "tags": meta.get("tags"),
                **{k: meta[k] for k in ("source_part", "target_part", "pattern") if meta.get(k) is not None},
                **(
                    {"pattern_params": params if isinstance(params, str) else json.dumps(params, sort_keys=True)}
                    if params is not None
                    else {}
                ),
                **{column: Path(os.path.relpath(path, relative_to)).as_posix() for column, path in files.items()},
            }
            rows.append(row)
    if not pair_dirs:
        problems.append(
            f"{root}: no pair folders found (expected {root}/<category>/<pair_id>/source.png and target.png)"
        )
    return rows, problems


def manifest_from_folder(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the manifest of a folder that follows the convention (module docstring); FolderError if it does not."""
    out_path = Path(out) if out is not None else Path(folder) / "manifest.parquet"
    rows, problems = scan_folder(folder, os.path.abspath(out_path.parent))
    if problems:
        raise FolderError(problems)
    return write_manifest(rows, out_path)


# ------------------------------------------------------------------------------------------- CLI


def from_folder_main(args: argparse.Namespace) -> int:
    """`clic-bench manifest from-folder DIR [--out PATH]`: write the manifest, then validate it."""
    try:
        path = manifest_from_folder(args.folder, args.out)
    except FolderError as err:
        for line in err.problems:
            print(line)
        print(f"no manifest written: {len(err.problems)} problem(s) in {args.folder}")
        return 2
    outside = escapes_folder(os.path.relpath(os.path.abspath(args.folder), os.path.abspath(path.parent)))
    report = load_manifest(path, allow_outside=outside)
    for line in report.lines():
        print(line)
    print(f"wrote {path}: {report.summary()}")
    if outside:
        print(
            f"note: {path} is outside {args.folder}, so its paths climb out of its folder: pass --allow-outside to use it"
        )
    return report.exit_code()
