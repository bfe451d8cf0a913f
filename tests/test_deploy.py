"""The deploy/ recipes, checked offline: YAML, Dockerfiles, the batch script."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tiled_seg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_copies_real_files_and_known_extras(name):
    text = (DEPLOY / "docker" / name).read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11\.\d+-slim", text, re.M)
    copies = re.findall(r"^COPY (.+) \S+$", text, re.M)
    sources = [s for line in copies for s in line.split()]
    assert "tiled_seg" in sources and "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"{name} copies {source}, which does not exist"
    extras = re.findall(r'"\.\[([a-z,]+)\]"', text)
    assert extras, f"{name} installs no extras"
    for group in extras:
        assert set(group.split(",")) <= EXTRAS, f"{name}: unknown extra in {group}"
    constraint = re.search(r"COPY (deploy/docker/\S+) \./constraints\.txt", text).group(1)
    pins = [ln for ln in (ROOT / constraint).read_text().splitlines() if ln and ln[0] != "#"]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", p) for p in pins)


def test_cuda_image_pins_dask_cuda_with_its_dask():
    pins = dict(ln.split("==") for ln in (DEPLOY / "docker" / "constraints-cuda.txt")
                .read_text().splitlines() if ln and ln[0] != "#")
    assert "dask-cuda" in pins and pins["dask"] == pins["distributed"]


def test_daskcluster_has_gpu_workers_and_autoscaler():
    docs = {d["kind"]: d for d in _docs(DEPLOY / "kubernetes" / "daskcluster.yaml")}
    cluster = docs["DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = worker["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    scheduler = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in scheduler["resources"]["limits"]
    assert cluster["spec"]["scheduler"]["service"]["ports"][0]["port"] == 8786
    assert docs["DaskAutoscaler"]["spec"]["cluster"] == cluster["metadata"]["name"]


def test_run_job_targets_the_cluster_scheduler_service():
    (job,) = _docs(DEPLOY / "kubernetes" / "run-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    (cluster,) = _docs(DEPLOY / "kubernetes" / "daskcluster.yaml")[:1]
    assert args[:2] == ["tiled-seg", "run"]
    assert args[args.index("--cluster") + 1] == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    config = args[args.index("--config") + 1]
    assert (ROOT / config.removeprefix("/opt/tiled-seg/")).is_file()


def test_compose_scheduler_and_workers():
    (compose,) = _docs(DEPLOY / "compose" / "docker-compose.yml")
    services = compose["services"]
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    for name in ("worker", "worker-gpu"):
        command = services[name]["command"]
        assert command[:3] == ["dask", "worker", "tcp://scheduler:8786"]
        assert services[name]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert "GPU=1" in services["worker-gpu"]["command"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_slurm_script_is_valid_bash_with_directives():
    script = DEPLOY / "slurm" / "tiled-seg.sbatch"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert re.search(r"^#SBATCH --time=\d\d:\d\d:\d\d$", text, re.M)
    assert "--cluster \"$address\"" in text and "srun" in text
    bash = shutil.which("bash")
    assert bash is not None
    checked = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_default_config_documents_the_cluster_section():
    written = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["cluster"]
    assert {"kind", "slurm", "kubernetes"} <= set(written)
    assert set(written["slurm"]) == set(load_config(None).cluster.slurm.model_fields)
    config = load_config(ROOT / "configs" / "default.yaml")
    assert config.cluster.kind == "local"
    assert config.cluster.slurm.walltime and config.cluster.kubernetes.image
