"""Run folders and manifests on object storage, against a real S3-compatible server on loopback.

The server is moto's server mode (``moto.server.ThreadedMotoServer``, moto 5.x): a real HTTP server that speaks
the S3 REST protocol, started by the fixture below on a free port of 127.0.0.1 and stopped after the module's
tests. The harness reaches it through s3fs exactly as it would reach AWS (``AWS_ENDPOINT_URL``), not through an
in-process patch. A run into ``s3://bucket/x`` of a manifest whose rows are ``s3://`` URIs is killed part-way
(SIGKILL of its driver and its local Ray cluster, as tests/test_reliability.py does) and resumed; its rows must
be those of the same suite run into a local folder.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_reliability import kill_session, write_drawn_manifest, write_suite_file

from harness import store
from harness.plan.manifest import write_manifest

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "clic-runs"
PAIRS, SEEDS = 20, [0, 1, 2]  # 60 cut-and-paste jobs at 64 px


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port; yields the environment that points s3fs (and boto) at it."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _s3():
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True)


def _s3_manifest(local_manifest: Path, prefix: str, out: Path) -> Path:
    """The manifest's files uploaded under ``prefix`` and a manifest naming them by their s3:// URIs."""
    fs = _s3()
    folder = local_manifest.parent
    names = sorted(p.name for p in folder.glob("*.png"))
    fs.put([str(folder / name) for name in names], [f"{prefix}/{name}" for name in names])
    rows = pq.read_table(local_manifest).to_pylist()
    path_keys = ("source_image", "source_mask", "target_image", "target_mask", "target_mask_gt", "expected_image")
    for row in rows:
        for key in path_keys:
            if row.get(key):
                row[key] = f"s3://{prefix}/{row[key]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(rows, out)


def _bench(suite: Path, out: str, env: dict, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", out, "--num-cpus", "2", "--quiet", *extra]


def _remote_results(uri: str) -> int:
    fs = _s3()
    fs.invalidate_cache()
    try:
        return sum(
            1
            for p in fs.ls(f"{uri.split('://', 1)[1]}/{store.RESULTS_DIR}")
            if p.endswith(".parquet") and store.TEMP_PREFIX not in p
        )
    except FileNotFoundError:
        return 0


def _compared(results):
    columns = ["job_id", "pair_id", "seed", "method", "metric", "value", "status"]
    return results[columns].sort_values(["job_id", "metric"]).reset_index(drop=True)


@pytest.mark.slow
def test_a_run_into_s3_killed_and_resumed_has_the_rows_of_a_local_run(s3_server, ray_session, tmp_path: Path) -> None:
    from harness.execute.runner import run_suite
    from harness.remote_folder import RemoteFolder

    local_manifest = write_drawn_manifest(tmp_path / "data", PAIRS)
    remote_manifest = _s3_manifest(local_manifest, f"{BUCKET}/data", tmp_path / "remote-manifest" / "manifest.parquet")
    local_suite = write_suite_file(tmp_path / "objects.yaml", local_manifest, SEEDS, ["ssim_psnr"])
    remote_suite = write_suite_file(remote_manifest.parent / "objects.yaml", remote_manifest, SEEDS, ["ssim_psnr"])
    uri = f"s3://{BUCKET}/runs/x"
    env = {
        **os.environ,
        **s3_server,
        "RAY_AUTH_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "CLIC_STAGING_DIR": str(tmp_path / "staging"),
        "CLIC_PUSH_SECONDS": "0.2",
        "CLIC_LEASE_SECONDS": "6",
    }

    # The reference: the same suite over the same files, into a local folder (the session's Ray cluster).
    local = run_suite(local_suite, tmp_path / "local", quiet=True)
    assert (local.done, local.failed) == (PAIRS * len(SEEDS), 0)

    driver = subprocess.Popen(
        _bench(remote_suite, uri, env, "--no-report"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while _remote_results(uri) < 10:
            assert driver.poll() is None, f"the driver ended early: {driver.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "timed out waiting for results in the bucket"
            time.sleep(0.1)
    finally:
        kill_session(driver)
    before = _remote_results(uri)
    assert 10 <= before < PAIRS * len(SEEDS), before
    assert _s3().exists(f"{BUCKET}/runs/x/.lock")  # the killed driver's lease: expires, then is taken over

    resumed = subprocess.run(
        _bench(remote_suite, uri, env), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    counts = re.search(r"(\d+) jobs: (\d+) done, (\d+) failed, (\d+) skipped", resumed.stdout)
    assert counts, resumed.stdout
    total, done, failed, skipped = map(int, counts.groups())
    assert (total, failed) == (PAIRS * len(SEEDS), 0) and skipped >= before and done == total - skipped
    assert f"report: {uri}/report/" in resumed.stdout, resumed.stdout

    # What is in the bucket, read back into a fresh folder, is the local run's rows: each job once.
    fs = _s3()
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/runs/x/.lock")  # released
    for name in (store.RUN_RECORD, store.PLAN_FILE, store.PAIRS_FILE, "report/index.html"):
        assert fs.exists(f"{BUCKET}/runs/x/{name}"), name
    check = RemoteFolder(uri, tmp_path / "check")
    check.pull()
    remote_rows, local_rows = store.read_results(check.local), store.read_results(tmp_path / "local")
    assert remote_rows.drop_duplicates(["job_id", "metric", "run_id"]).groupby(["job_id", "metric"]).size().max() == 1
    assert _compared(remote_rows).equals(_compared(local_rows))
    concepts = fs.ls(f"{BUCKET}/runs/x/{store.CONCEPTS_DIR}")  # every learned concept, complete
    assert concepts and all(
        fs.exists(f"{c}/concept.json") for c in concepts if not c.rsplit("/", 1)[-1].startswith(".")
    )
    for artifact in remote_rows["artifact_image"].dropna().unique():  # every artifact a row names is there
        assert (check.local / artifact).is_file(), artifact
    assert remote_rows["artifact_image"].notna().all()


def test_a_scheme_without_its_package_is_one_line(tmp_path: Path, capsys) -> None:
    """gs:// needs gcsfs (not a test dependency): `clic-bench run --out gs://…` says so in one line, before any work."""
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    from harness.cli import main

    local_manifest = write_drawn_manifest(tmp_path / "data", 1)
    suite = write_suite_file(tmp_path / "gs.yaml", local_manifest, [0], ["ssim_psnr"])
    assert main(["run", str(suite), "--out", "gs://bucket/runs/x", "--quiet", "--no-report"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clic-bench: error:")]
    assert len(errors) == 1 and "gcsfs" in errors[0] and "pip install gcsfs" in errors[0], errors


def test_the_lease_is_one_holder_at_a_time_and_a_dead_holders_lease_expires(
    s3_server, tmp_path: Path, monkeypatch
) -> None:
    """The lock of a remote run folder: created by a conditional PUT (If-None-Match: *), so a second run is refused
    (or waits) naming the holder; a lease its holder stopped renewing (a killed driver) is taken over."""
    from harness import remote_lease
    from harness.errors import UsageError
    from harness.remote_folder import RemoteFolder

    uri = f"s3://{BUCKET}/lease-test"
    first, second = RemoteFolder(uri, tmp_path / "a"), RemoteFolder(uri, tmp_path / "b")
    with first.leased("run-one", quiet=True):
        with pytest.raises(UsageError, match=r"in use by run run-one \(pid \d+ on .*\); wait for it to finish"):
            with second.leased("run-two", wait=False):
                pass
    assert not _s3().exists(f"{BUCKET}/lease-test/.lock")  # released
    # A holder that died: its lease object stays, not renewed; after LEASE_SECONDS the next run takes it over.
    _s3().pipe_file(f"{BUCKET}/lease-test/.lock", b'{"run_id": "dead"}')
    monkeypatch.setattr(remote_lease, "LEASE_SECONDS", 1.0)
    time.sleep(1.5)
    with second.leased("run-two", wait=False):
        assert b"run-two" in _s3().cat_file(f"{BUCKET}/lease-test/.lock")


def test_a_dead_lease_is_taken_by_exactly_one_run_and_its_holder_learns_it_lost_the_lease(
    s3_server, tmp_path: Path, monkeypatch
) -> None:
    """Two runs that find the same dead lease: the takeover is a PUT conditional on the dead lease's ETag
    (If-Match), so exactly one gets it. A holder that was taken for dead (not renewed in time) learns it at its
    next renewal, which is conditional on its own ETag: it stops mirroring and leaves the new holder's lease."""
    from harness import remote_lease
    from harness.errors import UsageError
    from harness.remote_folder import RemoteFolder

    uri = f"s3://{BUCKET}/takeover-test"
    lease = f"{BUCKET}/takeover-test/.lock"
    first, second = RemoteFolder(uri, tmp_path / "a"), RemoteFolder(uri, tmp_path / "b")
    _s3().pipe_file(lease, b'{"run_id": "dead"}')
    dead_tag = first.lease.holder(lease)[2]
    assert dead_tag
    taken = [
        folder.lease.take_over(lease, b'{"run_id": "' + name + b'"}', dead_tag)
        for folder, name in ((first, b"one"), (second, b"two"))
    ]
    assert [took for took, _ in taken] == [True, False] and b'"one"' in _s3().cat_file(lease)

    _s3().rm_file(lease)
    monkeypatch.setattr(remote_lease, "LEASE_SECONDS", 0.6)  # renewed every 0.2 s
    with first.leased("slow-run", quiet=True):
        _s3().pipe_file(lease, b'{"run_id": "taker"}')  # what a run that took it for dead writes
        deadline = time.monotonic() + 10
        while not first.lease_lost and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.lease_lost
        with pytest.raises(UsageError, match="another run took this run's lease"):
            first.push_if_due()
        store.write_run_record(first.local, {"suite": {"name": "slow"}})
        assert first.push() == 0 and not _s3().exists(f"{BUCKET}/takeover-test/run.json")  # nothing mirrored
    assert b"taker" in _s3().cat_file(lease)  # not deleted by the run that lost it


def test_push_uploads_before_it_deletes_and_pull_mirrors_the_results(s3_server, tmp_path: Path) -> None:
    """Compaction in the staging folder (a new file, then per-job files deleted) reaches the prefix in that order,
    and a pull makes another staging folder's results exactly the prefix's (a result only staged is dropped)."""
    from harness.remote_folder import RemoteFolder

    uri = f"s3://{BUCKET}/push-test"
    folder = RemoteFolder(uri, tmp_path / "a")
    folder.pull()

    def rows(job: str) -> list[dict]:
        return [{"job_id": job, "metric": "m", "value": 1.0, "status": "ok"}]

    for job in ("j1", "j2"):
        store.write_job_results(folder.local, job, rows(job))
    store.write_run_record(folder.local, {"suite": {"name": "s"}})
    assert folder.push() == 3
    assert sorted(p.rsplit("/", 1)[1] for p in _s3().ls(f"{BUCKET}/push-test/results")) == ["j1.parquet", "j2.parquet"]
    assert store.compact_results(folder.local, min_files=1) == 2
    deleted_after_upload = []
    original_rm = folder.fs.rm
    folder.fs.rm = lambda paths, **kw: (
        deleted_after_upload.append(_s3().ls(f"{BUCKET}/push-test/results")),
        original_rm(paths, **kw),
    )[1]
    folder.push()
    assert any("compacted-000001.parquet" in p for p in deleted_after_upload[0])  # uploaded before the deletes
    other = RemoteFolder(uri, tmp_path / "b")
    store.write_job_results(other.local, "only-staged", rows("only-staged"))
    other.pull()
    assert sorted(p.name for p in store.results_dir(other.local).iterdir()) == ["compacted-000001.parquet"]
    assert sorted(store.read_results(other.local)["job_id"]) == ["j1", "j2"]
    assert store.read_run_record(other.local) == {"suite": {"name": "s"}}


def test_a_concept_learned_on_one_node_is_fetched_on_another(s3_server, tmp_path: Path, monkeypatch) -> None:
    """Workers share no folder: the learner uploads the concept (concept.json, its completion marker, last), a task
    on another node (another staging folder) downloads it whole; a generate job's images are found by URI."""
    from harness import remote_folder
    from harness.remote_folder import fetch_concept, generated_image_uris, upload_folder

    uri = f"s3://{BUCKET}/concept-test"
    learner, other = tmp_path / "node-a", tmp_path / "node-b"
    concept = store.concept_dir(learner, "c1")
    (concept / "weights").mkdir(parents=True)
    (concept / "weights" / "tokens.safetensors").write_bytes(b"tokens")
    (concept / "concept.json").write_text("{}")
    assert not fetch_concept(uri, other, store.concept_dir(other, "c1"))  # nothing there yet
    uploaded = []
    fs = _s3()
    original_put = fs.put

    def recording_put(local, remote, **kwargs):
        uploaded.append([path.rsplit("/", 1)[-1] for path in remote])
        return original_put(local, remote, **kwargs)

    real_filesystem = remote_folder._filesystem
    monkeypatch.setattr(fs, "put", recording_put)
    monkeypatch.setattr(remote_folder, "_filesystem", lambda u: (fs, real_filesystem(u)[1]))
    upload_folder(uri, learner, concept, last="concept.json")
    monkeypatch.undo()
    assert uploaded == [["tokens.safetensors"], ["concept.json"]]  # the marker after everything it marks
    target = store.concept_dir(other, "c1")
    assert fetch_concept(uri, other, target) and store.concept_is_complete(target)
    assert (target / "weights" / "tokens.safetensors").read_bytes() == b"tokens"

    artifacts = store.artifact_dir(learner, "job1")
    artifacts.mkdir(parents=True)
    for name in ("edited.png", "edited-1.png", "attention.png"):
        (artifacts / name).write_bytes(b"png")
    upload_folder(uri, learner, artifacts)
    assert generated_image_uris(uri, "job1") == [
        f"{uri}/artifacts/job1/edited.png",
        f"{uri}/artifacts/job1/edited-1.png",
    ]


def _run_folder_with_artifacts(run_dir: Path, pairs: int) -> None:
    """A finished cut-and-paste run (two presets) of ``pairs`` pairs as the runner leaves it: pairs, run record,
    results and the output images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = run_dir.parent / "inputs"
    images.mkdir(parents=True)
    rows = []
    for index in range(pairs):
        pair_id = f"p{index:03d}"
        paths = {}
        for role in ("source_image", "source_mask", "target_image", "target_mask"):
            paths[role] = str(images / f"{pair_id}-{role}.png")
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[role])
        rows.append(
            {"pair_id": pair_id, "category": "furniture", "source_object": "chair", "target_object": "chair", **paths}
        )
        for preset in ("default", "other"):
            job_id = f"{preset}-{index:03d}"
            (run_dir / "artifacts" / job_id).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                run_dir / "artifacts" / job_id / "edited.png"
            )
            base = {
                "run_id": "r", "job_id": job_id, "concept_id": None, "task": "transfer", "pair_id": pair_id,
                "category": "furniture", "method": "cut_paste", "preset": preset, "seed": 0, "settings": "{}",
                "object_word": "chair", "status": "ok", "weights_label": "none", "metric_weights": "analytic",
                "artifact_image": f"artifacts/{job_id}/edited.png", "code_version": "v1",
            }  # fmt: skip
            value = float(index) + (preset == "other")
            store.write_job_results(
                run_dir, job_id, [{**base, "metric": "psnr_outside", "value": value, "higher_is_better": True}]
            )
    store.write_pairs(run_dir, rows)
    store.write_run_record(run_dir, {"suite": {"name": "remote-report"}, "models": {"cut_paste": None}})


def test_a_run_on_s3_is_reported_compared_and_packed_fetching_only_the_images_shown(
    s3_server, tmp_path: Path, monkeypatch, capsys
) -> None:
    from harness.analyse import pair_table
    from harness.analyse.remote_runs import reading_dir
    from harness.cli import main
    from harness.remote_folder import staging_dir, upload_folder

    pairs = pair_table.ALL_PAIRS_UP_TO + 16  # more than a report shows every pair of
    local = tmp_path / "made" / "run"
    _run_folder_with_artifacts(local, pairs)
    uri = f"s3://{BUCKET}/report-test"
    upload_folder(uri, local, local)
    monkeypatch.setenv("CLIC_STAGING_DIR", str(tmp_path / "staging"))
    staged = reading_dir(uri)
    # a run into the same prefix on this machine stages in staging_dir(uri): a result it has not pushed yet
    # must survive a report of the prefix
    unpushed = staging_dir(uri) / "results" / "not-pushed-yet.parquet"
    unpushed.parent.mkdir(parents=True)
    unpushed.write_bytes(b"rows")

    def fetched() -> set[str]:
        return {p.parent.name for p in (staged / "artifacts").rglob("edited.png")}

    assert main(["report", uri]) == 0
    assert f"report: {uri}/report/index.html" in capsys.readouterr().out
    assert unpushed.read_bytes() == b"rows" and staged != staging_dir(uri)
    shown = set(re.findall(r"(?:default|other)-\d{3}", (staged / "report" / "index.html").read_text()))
    assert 0 < len(fetched()) < 2 * pairs and fetched() == shown  # the outputs the grids show, and no other
    remote_report = {p.split("/report/", 1)[1] for p in _s3().find(f"{BUCKET}/report-test/report")}
    assert "index.html" in remote_report and "tables/pairs.parquet" in remote_report
    assert {name for name in remote_report if name.startswith("images/")}  # the thumbnails went up too
    # the tables are those of a report of the same folder on disk
    main(["report", str(local)])
    capsys.readouterr()
    summary = "tables/summary.csv"
    assert (staged / "report" / summary).read_text() == (local / "report" / summary).read_text()

    assert main(["compare", uri, str(local)]) == 0  # the same rows: no change
    assert "psnr_outside" in capsys.readouterr().out
    before = fetched()
    assert main(["pack", uri, "--pairs", "3", "--out", str(tmp_path / "pack")]) == 0
    capsys.readouterr()
    packed = fetched() - before
    # the packed pairs' outputs (3 questions and their attention checks) were fetched, not every job's
    assert 0 < len(packed) <= 12 and len(fetched()) < 2 * pairs
    assert (tmp_path / "pack" / "index.html").is_file()

    assert main(["report", f"s3://{BUCKET}/no-such-run"]) == 2 and "no such run folder" in capsys.readouterr().err
