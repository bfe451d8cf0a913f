"""Cluster kinds: local processes, a separately started scheduler, SLURM and
Kubernetes specs rendered offline, GPU routing and the no-GPU error."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

from tiled_seg._cli import main
from tiled_seg.cluster import (
    WORKER_ALLOCATOR_ENV,
    cluster_config,
    connect,
    count_gpus,
    gpu_resources,
    kubernetes_spec,
    slurm_cluster,
)
from tiled_seg.config import ClusterConfig, KubernetesConfig, RunConfig, SlurmConfig
from tiled_seg.errors import ClusterError, ConfigError
from tiled_seg.io import read_labels
from tiled_seg.pipeline import run
from tiled_seg.synth import make_slide

DASK = Path(sys.executable).with_name("dask")
START_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("cluster") / "slide.ome.zarr", size=(128, 128),
                      seed=11, chunk_px=32)


CONFIG = RunConfig(measure=False).with_overrides(**{"tiling.tile_px": 64})


@pytest.fixture(scope="module")
def local_labels(tmp_path_factory, slide):
    """Labels of a run on a LocalCluster of two worker processes made by ``connect``."""
    output = tmp_path_factory.mktemp("local") / "out.zarr"
    with connect(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert gpu_resources(client, backend_uses_gpu=True) is None
        run(slide.path, CONFIG, output=output, client=client)
    return read_labels(output, "cells").compute()


@pytest.fixture(scope="module")
def scheduler_address():
    """A `dask scheduler` and two `dask worker` processes on loopback."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(2):
        procs.append(subprocess.Popen(
            [str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard",
             "--host", "127.0.0.1", "--death-timeout", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        with Client(address, timeout=START_S) as client:
            client.wait_for_workers(2, timeout=START_S)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
def test_existing_scheduler_gives_same_labels_as_local(tmp_path, slide, local_labels,
                                                       scheduler_address):
    output = tmp_path / "remote.zarr"
    summary = tmp_path / "run.json"
    result = CliRunner().invoke(main, [
        "run", str(slide.path), "--output", str(output), "--tile-size", "64",
        "--cluster", scheduler_address, "--summary", str(summary),
    ])
    assert result.exit_code == 0, result.output
    remote = read_labels(output, "cells").compute()
    assert remote.max() > 20
    assert remote.tobytes() == local_labels.tobytes()
    assert json.loads(summary.read_text())["n_cells"] == int(local_labels.max())


def test_gpu_resources_route_only_gpu_backends():
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      resources={"GPU": 1}, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert gpu_resources(client, backend_uses_gpu=True) == {"GPU": 1}
        assert gpu_resources(client, backend_uses_gpu=False) is None
        # A task with the resource runs on the GPU worker.
        assert client.submit(sum, [1, 2], resources={"GPU": 1}).result(timeout=30) == 3


@pytest.mark.skipif(count_gpus() > 0, reason="this machine has a GPU; the no-GPU error cannot occur")
def test_local_cuda_without_gpu_is_a_clear_error(tmp_path, slide):
    with pytest.raises(ClusterError, match="no GPU.*--cluster local"):
        with connect("local-cuda"):
            pass
    result = CliRunner().invoke(main, ["run", str(slide.path), "--cluster", "local-cuda",
                                       "--output", str(tmp_path / "o.zarr")])
    assert result.exit_code == 2
    assert "no GPU" in result.output and not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("target, kind, address", [
    ("local", "local", None),
    ("slurm", "slurm", None),
    ("tcp://10.0.0.5:8786", "address", "tcp://10.0.0.5:8786"),
    ("scheduler.example:8786", "address", "scheduler.example:8786"),
    (None, "local", None),
])
def test_cluster_target_parsing(target, kind, address):
    chosen = cluster_config(target)
    assert (chosen.kind, chosen.address) == (kind, address)


def test_bad_cluster_target_names_the_choices():
    with pytest.raises(ConfigError, match="local-cuda"):
        cluster_config("slurmm")
    with pytest.raises(Exception, match="address"):
        ClusterConfig(kind="address")


def test_slurm_job_script_has_queue_account_walltime_and_gres():
    pytest.importorskip("dask_jobqueue", reason="needs the cluster extra (dask-jobqueue)")
    config = SlurmConfig(queue="gpu", account="lab42", walltime="02:30:00", cores=8,
                         memory="32GB", gpus_per_job=2, job_extra_directives=("--qos=normal",),
                         job_script_prologue=("module load cuda",))
    with slurm_cluster(config) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p gpu" in script
    assert "#SBATCH -A lab42" in script
    assert "#SBATCH -t 02:30:00" in script
    assert "#SBATCH --gres=gpu:2" in script and "#SBATCH --qos=normal" in script
    assert "--resources GPU=1" in script and "--nworkers 2" in script
    assert "module load cuda" in script
    assert script.index("export MALLOC_MMAP_THRESHOLD_=8388608") < script.index("module load cuda")


def test_slurm_refuses_fewer_cores_than_workers():
    pytest.importorskip("dask_jobqueue", reason="needs the cluster extra (dask-jobqueue)")
    with pytest.raises(ConfigError, match="cores"):
        slurm_cluster(SlurmConfig(cores=1, gpus_per_job=2))


def test_kubernetes_spec_limits_gpus_on_workers_only():
    pytest.importorskip("dask_kubernetes", reason="needs the cluster extra (dask-kubernetes)")
    spec = kubernetes_spec(KubernetesConfig(image="repo/tiled-seg:cuda", n_workers=3,
                                            gpus_per_worker=1, env={"AWS_ENDPOINT_URL": "http://s3"}),
                           name="seg")
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    worker = spec["spec"]["worker"]
    container = worker["spec"]["containers"][0]
    assert worker["replicas"] == 3 and container["image"] == "repo/tiled-seg:cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "GPU=1" in container["args"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://s3"} in container["env"]
    assert {"name": "MALLOC_TRIM_THRESHOLD_", "value": str(64 * 2**20)} in container["env"]
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(scheduler["resources"])


def _allocator_env() -> dict[str, str | None]:
    import os

    return {name: os.environ.get(name) for name in WORKER_ALLOCATOR_ENV}


def test_local_workers_start_with_the_allocator_settings(monkeypatch):
    for name in WORKER_ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    with connect(workers=1) as client:
        (worker_env,) = client.run(_allocator_env).values()
    assert worker_env == WORKER_ALLOCATOR_ENV


def test_allocator_setting_in_the_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with connect(workers=1) as client:
        (worker_env,) = client.run(_allocator_env).values()
    assert worker_env["MALLOC_TRIM_THRESHOLD_"] == "65536"
    assert worker_env["MALLOC_MMAP_THRESHOLD_"] == WORKER_ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]


def test_cluster_section_in_run_config():
    config = RunConfig.model_validate({"cluster": {"kind": "slurm", "slurm": {"queue": "q"}}})
    assert config.cluster.slurm.queue == "q"
    with pytest.raises(Exception, match="extra|queu"):
        RunConfig.model_validate({"cluster": {"slurm": {"queu": "q"}}})


def test_gpu_workers_get_threads_beside_the_predict_thread(monkeypatch):
    from tiled_seg.cluster import gpu_worker_threads

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert gpu_worker_threads(ClusterConfig(kind="local-cuda", workers=4)) == 4
    assert gpu_worker_threads(ClusterConfig(kind="local-cuda", workers=4, gpu_worker_threads=2)) == 2
    pytest.importorskip("dask_kubernetes", reason="needs the cluster extra (dask-kubernetes)")
    gpu = kubernetes_spec(KubernetesConfig(cpu="8", gpus_per_worker=1), name="seg")
    cpu = kubernetes_spec(KubernetesConfig(cpu="8"), name="seg")
    args = [s["spec"]["worker"]["spec"]["containers"][0]["args"] for s in (gpu, cpu)]
    assert args[0][args[0].index("--nthreads") + 1] == "8"
    assert args[1][args[1].index("--nthreads") + 1] == "1"
