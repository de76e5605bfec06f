"""The harness on a GPU cluster, on a CPU: a local Ray cluster declared with fake GPUs (``ray.init(num_gpus=2)``).

Ray schedules by declared resources, so placement, packing and refusals are exercised without a GPU; the jobs
themselves run on the CPU (``device: cpu``). Out of memory is injected by the test method ``fault_injection``
(``torch.cuda.OutOfMemoryError``), which logs the resources Ray gave each attempt.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from run_inputs import make_pairs, make_suite
from test_reliability import assert_each_job_once

from harness import store
from harness.execute import run_folder
from harness.execute.runner import execute


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[object]:
    """2 CPUs and 2 fake GPUs; the shared 2-CPU session (tests/conftest.py) is restored afterwards."""
    import ray

    from harness.execute.scorer import forget_metric_scorer

    was_running = ray.is_initialized()
    ray.shutdown()
    forget_metric_scorer()
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()
    forget_metric_scorer()
    if was_running:
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)


def gpu_suite(presets: list[str], resources: dict, **changes) -> object:
    suite = {
        "name": "gpu",
        "model": "tiny",
        "device": "cpu",
        "methods": [{"name": "fault_injection", "presets": presets, "learn": {"steps": 2}}],
        "seeds": [0],
        "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
        "metrics": ["ssim_psnr"],
        "resources": resources,
    }
    suite.update(changes)
    return make_suite(suite)


def attempt_lines(run: Path) -> list[list[str]]:
    """Per concept, each learning attempt's ``PID:gpus=G:cpus=C`` (tests/fault_injection.py), in order."""
    logs = sorted((run / store.CONCEPTS_DIR).glob(".fault-attempts-*"))
    return [[line.split(":", 1)[1] for line in path.read_text().split()] for path in logs]


# ------------------------------------------------------------------------------------ out of memory
def test_out_of_memory_is_retried_with_a_whole_gpu_and_the_row_says_so(gpu_cluster, tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "data", 1)
    run = tmp_path / "run"
    suite = gpu_suite(["oom-once"], {"num_cpus": 1, "num_gpus": 0.5, "max_retries": 2})
    summary = execute(suite, pairs, run, quiet=True)
    assert (summary.done, summary.failed) == (1, 0)
    assert attempt_lines(run) == [["gpus=0.5:cpus=1", "gpus=1:cpus=1"]]  # half a GPU ran out; a whole one did not
    results = store.read_results(run)
    assert set(results["status"]) == {"ok"}
    assert set(results["notes"]) == {"learn ran out of memory with num_gpus 0.5; retried with num_gpus 1"}
    assert_each_job_once(run, 1)


def test_out_of_memory_on_every_attempt_fails_after_max_retries_as_the_machines_failure(
    gpu_cluster, tmp_path: Path
) -> None:
    pairs = make_pairs(tmp_path / "data", 1)
    run = tmp_path / "run"
    suite = gpu_suite(["oom"], {"num_cpus": 1, "num_gpus": 0.5, "max_retries": 2})
    summary = execute(suite, pairs, run, quiet=True)
    assert (summary.done, summary.failed, summary.infrastructure_failed) == (0, 1, 1)
    assert attempt_lines(run) == [["gpus=0.5:cpus=1", "gpus=1:cpus=1", "gpus=1:cpus=1"]]  # 1 + max_retries
    error = store.read_results(run)["error"].iloc[0]
    assert error.startswith(
        run_folder.INFRASTRUCTURE_PREFIX + "learn ran out of memory with num_gpus 0.5, then "
        "num_gpus 1, then num_gpus 1 (max_retries 2): "
    ), error
    assert "CUDA out of memory" in error
    assert run_folder.infrastructure_failures(run)  # the next run runs it again without --retry-failed


def test_a_cpu_job_out_of_memory_retries_with_twice_the_cpus() -> None:
    from harness.execute.scheduler import larger_packing, packing_text

    assert larger_packing({"num_cpus": 1, "num_gpus": 0}, node_cpus=8) == {"num_cpus": 2, "num_gpus": 0}
    assert larger_packing({"num_cpus": 6, "num_gpus": 0}, node_cpus=8) == {"num_cpus": 8, "num_gpus": 0}
    assert larger_packing({"num_cpus": 1, "num_gpus": 0.25}, node_cpus=8) == {"num_cpus": 1, "num_gpus": 1}
    assert larger_packing({"num_cpus": 1, "num_gpus": 2}, node_cpus=8) == {"num_cpus": 1, "num_gpus": 2}
    assert packing_text({"num_cpus": 2, "num_gpus": 0}) == "num_cpus 2"


def test_what_counts_as_out_of_memory() -> None:
    import torch

    assert run_folder.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert run_folder.is_out_of_memory(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
            "can't allocate memory: you tried to allocate 123 bytes"
        )
    )
    wrapped = RuntimeError("task failed")
    wrapped.cause = torch.OutOfMemoryError("CUDA out of memory.")  # a Ray task error carries the task's own error
    assert run_folder.is_out_of_memory(wrapped) and run_folder.is_infrastructure_error(wrapped)
    assert not run_folder.is_out_of_memory(FloatingPointError("loss is nan at step 1"))


# ------------------------------------------------------------------------------- preflight on the cluster
@pytest.mark.parametrize(
    "resources, key, says",
    [
        ({"num_gpus": 4}, "resources.num_gpus", "4 GPUs per job, but no node has that (at most 2 GPUs)"),
        ({"num_cpus": 3}, "resources.num_cpus", "3 CPUs per job, but no node has that (at most 2 CPUs)"),
        ({"custom": {"A100": 1}}, "resources.custom.A100", "1 A100 per job, but no node has that (at most 0 A100)"),
        ({"memory_gb": 100000}, "resources.memory_gb", "1e+05 GiB memory per job, but no node has that"),
    ],
)
def test_a_request_no_node_can_satisfy_is_one_line_before_any_job(
    gpu_cluster, tmp_path: Path, resources: dict, key: str, says: str, capsys
) -> None:
    """Not Ray's "No available node types can fulfill resource request" every 35 s without end."""
    import json
    import time

    from harness.cli import main

    suite = tmp_path / "suite.yaml"
    manifest = Path(__file__).resolve().parents[2] / "manifests" / "furniture" / "manifest.parquet"
    suite.write_text(
        json.dumps(
            {
                "name": "big",
                "model": "tiny",
                "manifest": str(manifest),
                "limit_pairs": 1,
                "methods": [{"name": "cut_paste"}],
                "metrics": ["ssim_psnr"],
                "resources": {"num_cpus": 1, **resources},
            }
        )
    )
    started = time.perf_counter()
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--no-report"]) == 2
    print(f"refused in {time.perf_counter() - started:.1f} s")  # printed, not asserted (shared machine)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"clic-bench: error: {suite}: {key}: {says}"), lines[0]
    assert "the cluster has 1 node: 2 CPUs, 2 GPUs, " in lines[0]
    assert not store.has_results(tmp_path / "run")  # nothing ran


def test_what_the_cluster_check_refuses_node_by_node() -> None:
    from harness.plan.preflight import cluster_problems

    two_single_gpu_nodes = [{"CPU": 8, "GPU": 1, "memory": 64 * 2**30}, {"CPU": 8, "GPU": 1, "memory": 64 * 2**30}]
    suite = make_suite(
        {"name": "x", "model": "tiny", "methods": [{"name": "cut_paste"}], "resources": {"num_cpus": 1, "num_gpus": 2}}
    )
    (line,) = cluster_problems(suite, two_single_gpu_nodes)  # 2 GPUs in the cluster, but not on one node
    assert (
        "resources.num_gpus: 2 GPUs per job, but no node has that (at most 1 GPU); the cluster has 2 nodes: "
        "8 CPUs, 1 GPU, 64 GiB memory" in line
    )
    mixed = [{"CPU": 16, "memory": 8 * 2**30}, {"CPU": 2, "GPU": 1, "memory": 8 * 2**30}]
    suite = make_suite(
        {"name": "x", "model": "tiny", "methods": [{"name": "cut_paste"}], "resources": {"num_cpus": 4, "num_gpus": 1}}
    )
    (line,) = cluster_problems(suite, mixed)  # CPUs on one node, the GPU on the other
    assert "resources: 4 CPUs, 1 GPU per job, but no one node has all of it" in line
    no_gpu = [{"CPU": 2, "memory": 2**30}]
    suite = make_suite({"name": "x", "model": "tiny", "device": "cuda", "methods": [{"name": "cut_paste"}]})
    (line,) = cluster_problems(suite, no_gpu)
    assert "device: cuda, but the cluster has no GPU (the cluster has 1 node: 2 CPUs, 0 GPUs, 1 GiB memory)" in line
    assert (
        cluster_problems(
            make_suite(
                {"name": "x", "model": "tiny", "methods": [{"name": "cut_paste"}], "resources": {"num_gpus": 0.5}}
            ),
            two_single_gpu_nodes,
        )
        == []
    )


# ------------------------------------------------------------------------------- resources per method
def test_methods_are_packed_by_their_declared_memory() -> None:
    """CLiC's counted 7.1 GiB (SD 1.5, 512 px, fp32; benchmarks/perf/README.md) packs two per 16 GiB card, three per
    24 GiB; Break-A-Scene `original` (UNet + text encoder train: ≈ 17.8 GiB) takes a whole card; a method without a
    declaration keeps the suite's num_gpus; a method entry's own resources win."""
    from harness.execute.packing import gpus_for_memory, method_resources

    assert gpus_for_memory(7.1, 16) == 0.5 and gpus_for_memory(7.1, 24) == pytest.approx(1 / 3)
    assert gpus_for_memory(17.81, 16) == 1.0 and gpus_for_memory(17.81, 40) == 0.5
    suite = make_suite(
        {
            "name": "gpu",
            "model": "tiny",
            "dtype": "fp32",
            "methods": [
                {"name": "clic"},
                {"name": "break_a_scene", "presets": ["original"]},
                {"name": "textual_inversion"},
                {"name": "custom_diffusion", "resources": {"num_gpus": 0.25, "num_cpus": 2}},
            ],
            "resources": {"num_gpus": 1, "num_cpus": 1, "gpu_memory_gib": 24},
        }
    )
    packed = method_resources(suite, 512)
    # CLiC: weights 3.97 + trained 0.29 + kept for backward 2.84 GiB, as the README counts them.
    assert packed[("clic", "paper")]["expected_gpu_memory_gib"] == pytest.approx(3.97 + 0.29 + 2.84)
    assert packed[("clic", "paper")]["num_gpus"] == pytest.approx(1 / 3)
    assert packed[("break_a_scene", "original")]["num_gpus"] == 1.0
    assert packed[("textual_inversion", "default")] == {
        "num_gpus": 1,
        "num_cpus": 1,
        "expected_gpu_memory_gib": None,
        "why": "the suite's resources",
    }
    assert packed[("custom_diffusion", "default")]["num_gpus"] == 0.25
    assert packed[("custom_diffusion", "default")]["num_cpus"] == 2
    bf16 = make_suite(
        {
            "name": "gpu",
            "model": "tiny",
            "dtype": "bf16",
            "methods": [{"name": "clic"}],
            "resources": {"num_gpus": 1, "gpu_memory_gib": 16},
        }
    )
    assert method_resources(bf16, 512)[("clic", "paper")]["num_gpus"] == 0.25  # ≈ 3.7 GiB: four per card


def test_per_method_resources_are_what_ray_gives_each_job(gpu_cluster, tmp_path: Path) -> None:
    """On the fake-GPU cluster: a declared 8 GiB method on 16 GiB GPUs gets half a GPU, a method entry's own
    resources a quarter, each learn as logged by the method itself; run.json records the packing."""
    pairs = make_pairs(tmp_path / "data", 1)
    run = tmp_path / "run"
    suite = make_suite(
        {
            "name": "pack",
            "model": "tiny",
            "device": "cpu",
            "seeds": [0],
            "methods": [
                {"name": "fault_injection", "presets": ["slow"], "learn": {"steps": 1}},
                {
                    "name": "fault_injection",
                    "presets": ["record"],
                    "learn": {"steps": 1},
                    "resources": {"num_gpus": 0.25},
                },
            ],
            "transfer": {"t_start": [10], "eta": [1.0], "steps": 20},
            "metrics": ["ssim_psnr"],
            "resources": {"num_cpus": 1, "num_gpus": 1, "gpu_memory_gib": 16},
        }
    )
    summary = execute(suite, pairs, run, quiet=True)
    assert (summary.done, summary.failed) == (2, 0)
    assert sorted(line for lines in attempt_lines(run) for line in lines) == ["gpus=0.25:cpus=1", "gpus=0.5:cpus=1"]
    packing = store.read_run_record(run)["packing"]
    assert packing["fault_injection/slow"]["num_gpus"] == 0.5 and packing["fault_injection/record"]["num_gpus"] == 0.25
    assert store.read_run_record(run)["tf32"]["enabled"] is True


# ------------------------------------------------------------------------------------------------- TF32
def test_tf32_is_on_by_default_on_gpus_that_have_it_and_switchable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from clic.device import configure_tf32
    from harness.execute.runner import job_options

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        for capability, env, expected in (((8, 0), None, True), ((7, 5), None, False), ((9, 0), "0", False)):
            monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
            if env is None:
                monkeypatch.delenv("CLIC_TF32", raising=False)
            else:
                monkeypatch.setenv("CLIC_TF32", env)
            assert configure_tf32("cuda:0") is expected, (capability, env)
            assert torch.backends.cuda.matmul.allow_tf32 is expected and torch.backends.cudnn.allow_tf32 is expected
        assert configure_tf32("cpu") is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    off = make_suite({"name": "x", "model": "tiny", "methods": [{"name": "cut_paste"}], "tf32": False})
    assert job_options(off)["runtime_env"] == {"env_vars": {"CLIC_TF32": "0"}}
    assert "runtime_env" not in job_options(
        make_suite({"name": "x", "model": "tiny", "methods": [{"name": "cut_paste"}]})
    )


def test_a_method_entry_asking_too_much_is_refused_naming_it() -> None:
    from harness.execute import cluster

    suite = make_suite(
        {
            "name": "x",
            "model": "tiny",
            "methods": [{"name": "cut_paste"}, {"name": "clic", "resources": {"num_gpus": 2}}],
            "resources": {"num_gpus": 1},
        }
    )
    nodes = [{"CPU": 8, "GPU": 1, "memory": 2**34}]

    class FakeRay:
        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": nodes[0]}]

    import sys

    real = sys.modules.get("ray")
    sys.modules["ray"] = FakeRay  # check_cluster reads only ray.nodes()
    try:
        with pytest.raises(Exception) as refused:
            cluster.check_cluster(suite)
    finally:
        if real is not None:
            sys.modules["ray"] = real
        else:
            sys.modules.pop("ray")
    (line,) = refused.value.problems
    assert ": methods[1].resources.num_gpus: 2 GPUs per job, but no node has that (at most 1 GPU)" in line


# --------------------------------------------------------------------------------------- metric actor pool
def test_metric_actors_sit_on_gpu_slots_and_two_score_what_one_scores(gpu_cluster, tmp_path: Path) -> None:
    """A pool of 2 metric actors on the fake-GPU cluster: each on a GPU slot (its models would be on that GPU), and
    the values equal those of 1 actor, job by job."""
    import ray

    from harness.execute.scorer import METRIC_ACTOR_PREFIX, metric_pool_shape

    pairs = make_pairs(tmp_path / "data", 3)
    values = {}
    for actors in (1, 2):
        suite = make_suite(
            {
                "name": "pool",
                "model": "tiny",
                "device": "cpu",
                "seeds": [0],
                "methods": [{"name": "cut_paste"}],
                "metrics": ["ssim_psnr", "clip_image"],
                "metric_actors": actors,
                "resources": {"num_cpus": 1, "num_gpus": 0},
            }
        )
        run = tmp_path / f"run-{actors}"
        summary = execute(suite, pairs, run, quiet=True, allow_random_metrics=True)
        assert (summary.done, summary.failed) == (3, 0)
        rows = store.read_results(run)
        values[actors] = dict(zip(zip(rows["job_id"], rows["metric"]), rows["value"]))
        named = [name for name in ray.util.list_named_actors() if name.startswith(METRIC_ACTOR_PREFIX)]
        assert len(named) == actors
        # The run is over, the pool stays for the next run: what the cluster has left of its 2 GPUs is theirs.
        assert ray.available_resources().get("GPU") == pytest.approx(2 - 0.1 * actors)
    assert values[1].keys() == values[2].keys() and len(values[1]) >= 3 * 2
    assert all(values[1][key] == pytest.approx(values[2][key], abs=1e-6) for key in values[1])
    assert metric_pool_shape(None, {}, {"CPU": 2}) == (1, 0.0)
    assert metric_pool_shape(
        None, {"clip_image": "harness.metrics.clip_sim:ClipImageSimilarity"}, ray.cluster_resources()
    ) == (1, 0.1)  # 2 GPUs: one actor per 4 GPUs, at least one
    assert metric_pool_shape(None, {"clip_image": "harness.metrics.clip_sim:ClipImageSimilarity"}, {"GPU": 16})[0] == 4
