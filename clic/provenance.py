"""What the weights of a model folder are: a cheap fingerprint of its files, and the marker that labels random
weights (``clic_weights.json``), so every row, table and banner made with a random build says so."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHTS_MARKER = "clic_weights.json"  # beside model_index.json: what the weights of a folder this project wrote are


def _random_registry() -> Path:
    return Path(os.environ.get("CLIC_CACHE", Path.home() / ".cache" / "clic")) / "random-weights"


def write_weights_marker(directory: str | Path, label: str, made_by: str, random_weights: bool = True) -> None:
    """Mark a folder of weights this project made (random, or trained on the synthetic world) with its label, so
    every row, table and banner made with it says so; its fingerprint is also remembered on this machine, so a
    copy without the marker is still recognised."""
    directory = Path(directory)
    record = {"weights_label": label, "random_weights": random_weights, "made_by": made_by}
    (directory / WEIGHTS_MARKER).write_text(json.dumps(record, indent=1))
    try:
        registry = _random_registry()
        registry.mkdir(parents=True, exist_ok=True)
        (registry / f"{weights_fingerprint(directory)}.json").write_text(json.dumps(record))
    except OSError:  # a read-only cache: the marker in the folder still labels it
        pass


def folder_weights_label(folder: Path, fingerprint: str, model: str) -> str:
    """A folder's weights label: its marker's, else a known random build's (by fingerprint), else the model id."""
    for path in (folder / WEIGHTS_MARKER, _random_registry() / f"{fingerprint}.json"):
        try:
            label = json.loads(path.read_text()).get("weights_label")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(label, str) and label:
            return label
    return model


def weights_fingerprint(folder: Path) -> str:
    """A cheap identity of a checkpoint folder: name, size and the first/last MiB of each weights file.

    Hashing a 4 GB checkpoint on every run costs ~10 s; the header of a safetensors file holds every
    tensor's name, shape and offset, and the tail catches a retrained file of the same layout.
    """
    digest = hashlib.sha256()
    suffixes = {".safetensors", ".bin", ".ckpt", ".pt"}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in suffixes or p.name.endswith("config.json")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]
