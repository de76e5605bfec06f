"""End to end against what users do today: the same pairs learned and transferred by a shell loop of
``clic learn`` + ``clic transfer`` processes (how research code is run per pair: one process per step, the
pairs one after another) and by one ``clic-bench run`` on a local cluster of this machine's CPUs.

Both do the same work per pair (CLiC paper preset, ``steps`` learning steps, one transfer at t_start 10 with
20 DDIM steps, the tiny model at its native resolution); the harness also scores each transfer with a
closed-form metric and writes its report tables, which the loop does not.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness_bench import MANIFESTS, ROOT

PAIRS_PER_MANIFEST = 4  # furniture and jewelry: 8 pairs
TRANSFER = {"t_start": [10], "eta": [1.0], "steps": 20}


def shell_loop_vs_harness(steps: int = 30) -> dict[str, Any]:
    import json

    from harness.plan.resolve import load_pairs
    from harness.plan.suite import suite_from_dict

    data = {
        "name": "perf-end-to-end",
        "manifests": MANIFESTS[:2],
        "model": "tiny",
        "seeds": [0],  # furniture, jewelry
        "limit_pairs": PAIRS_PER_MANIFEST,
        "methods": [{"name": "clic", "presets": ["paper"], "learn": {"steps": steps}}],
        "transfer": TRANSFER,
        "tasks": ["transfer"],
        "metrics": ["ssim_psnr"],
    }
    pairs = load_pairs(suite_from_dict(data, source="perf-suite", base_dir=ROOT))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        lines = ["set -e"]
        for pair in pairs:
            concept, edited = (
                Path(tmp) / "loop" / pair.pair_id / "concept",
                Path(tmp) / "loop" / pair.pair_id / "edited",
            )
            lines.append(
                " ".join(
                    map(
                        shlex.quote,
                        [
                            sys.executable,
                            "-m",
                            "clic.cli",
                            "learn",
                            "--model",
                            "tiny",
                            "--image",
                            pair.source_image,
                            "--mask",
                            pair.source_mask,
                            "--object",
                            pair.source_object,
                            "--steps",
                            str(steps),
                            "--seed",
                            "0",
                            "--quiet",
                            "--out",
                            str(concept),
                        ],
                    )
                )
            )
            lines.append(
                " ".join(
                    map(
                        shlex.quote,
                        [
                            sys.executable,
                            "-m",
                            "clic.cli",
                            "transfer",
                            "--model",
                            "tiny",
                            "--concept",
                            str(concept),
                            "--image",
                            pair.target_image,
                            "--mask",
                            pair.target_mask,
                            "--object",
                            pair.target_object,
                            "--t-start",
                            "10",
                            "--eta",
                            "1.0",
                            "--steps",
                            str(TRANSFER["steps"]),
                            "--seed",
                            "0",
                            "--out",
                            str(edited),
                        ],
                    )
                )
            )
        started = time.perf_counter()
        subprocess.run(["bash", "-c", "\n".join(lines)], check=True, env=env, capture_output=True)
        loop_s = time.perf_counter() - started

        suite_file = Path(tmp) / "suite.json"
        suite_file.write_text(json.dumps(data))
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", str(suite_file), "--out", str(Path(tmp) / "run"), "--quiet"],
            check=True,
            env=env,
            capture_output=True,
        )
        harness_s = time.perf_counter() - started
    return {"pairs": len(pairs), "steps": steps, "loop_s": loop_s, "harness_s": harness_s, "ratio": loop_s / harness_s}
