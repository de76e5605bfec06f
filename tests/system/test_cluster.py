"""The README's cluster recipe, proven with Ray's own client: `ray start --head` on this machine, `ray job submit
--working-dir` of a one-pair suite, the results checked, and the cluster this test started stopped.

The machine may run other Ray clusters (other users, other tests): this one listens on loopback only, on ports
found free, keeps its session files in its own temp dir (so `address="auto"` elsewhere never finds it), and is
stopped by killing its own process group, never with `ray stop` (which stops every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import store

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def processes_under(marker: str) -> list[int]:
    """Pids of processes whose command line names ``marker`` (this cluster's temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class LocalCluster:
    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        (
            gcs,
            dashboard,
            client,
            node_manager,
            object_manager,
            agent_listen,
            agent_grpc,
            runtime_env,
            metrics,
            *workers,
        ) = free_ports(9 + 12)
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": "",
        }
        self.log = (temp_dir.parent / f"{temp_dir.name}-start.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
                f"--node-manager-port={node_manager}",
                f"--object-manager-port={object_manager}",
                f"--dashboard-agent-listen-port={agent_listen}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={runtime_env}",
                f"--metrics-export-port={metrics}",
                f"--worker-port-list={','.join(map(str, workers))}",
                "--num-cpus=2",
                "--object-store-memory=200000000",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=temp_dir,
        )

    def ray(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"ray start exited: {self.start_log()}"
            try:
                if self.ray("job", "list", "--address", self.dashboard, timeout=60).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(2)
        raise AssertionError(f"the job server at {self.dashboard} did not answer: {self.start_log()}")

    def start_log(self) -> str:
        self.log.flush()
        return (self.temp_dir.parent / f"{self.temp_dir.name}-start.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Kill this cluster's processes only: its process group (ray start made itself the leader; Ray's
        reaper and services stay in it), then any straggler whose command line names its temp dir."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        for pid in processes_under(str(self.temp_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.log.close()


@pytest.fixture
def local_cluster() -> Iterator[LocalCluster]:
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    temp_dir = Path(tempfile.mkdtemp(prefix="clic-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    cluster = LocalCluster(temp_dir)
    try:
        yield cluster
    finally:
        cluster.stop()
        left = processes_under(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        Path(f"{temp_dir}-start.log").unlink(missing_ok=True)
        assert not left, f"processes of the test cluster still alive: {left}"


def test_readme_cluster_recipe_runs_a_one_pair_suite_with_ray_job_submit(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.wait_ready()
    out = tmp_path / "runs" / "one_pair"  # a folder every node reaches: here, the only node's disk
    runtime_env = json.dumps({"excludes": [".venv", "runs", ".git"]})
    submitted = local_cluster.ray(
        "job",
        "submit",
        "--address",
        local_cluster.dashboard,
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        runtime_env,
        "--",
        "python",
        "-m",
        "harness.cli",
        "run",
        "benchmarks/one_pair.yaml",
        "--out",
        str(out),
        "--address",
        "auto",
        "--quiet",
        timeout=1200,
    )
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and "succeeded" in log, log[-4000:]

    results = store.read_results(out)
    jobs = results.drop_duplicates("job_id")
    assert sorted(jobs["method"]) == ["clic", "cut_paste"] and set(jobs["status"]) == {"ok"}, log[-4000:]
    assert jobs["pair_id"].nunique() == 1
    values = results.dropna(subset=["metric"])
    assert {"ssim_outside", "psnr_outside", "pattern_fidelity"} <= set(values["metric"])
    assert values["value"].notna().all()
    run_info = json.loads((out / store.RUN_RECORD).read_text())
    assert run_info["counts"]["done"] == 2 and run_info["counts"]["failed"] == 0
    # The driver ran as a Ray job on this cluster: its node is the only node the jobs ran on.
    assert len(run_info["nodes"]) == 1
