"""Where a run's tasks execute: local, local-cuda, SLURM, Kubernetes or a running scheduler.

Every kind ends in one :class:`distributed.Client`. Clusters with GPU
workers give each worker the resource ``GPU`` (one per GPU), and
:func:`gpu_resources` tells the pipeline whether to route segmentation tasks
there; CPU stages run without resources. The optional packages (dask-cuda,
dask-jobqueue, dask-kubernetes) are imported only when their kind is asked
for.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import uuid
from typing import Any, Iterator

import dask
from distributed import Client, LocalCluster

from tiled_seg.config import ClusterConfig, KubernetesConfig, SlurmConfig
from tiled_seg.errors import ClusterError, ConfigError, DependencyError

__all__ = [
    "KINDS",
    "connect",
    "cluster_config",
    "make_cluster",
    "slurm_cluster",
    "kubernetes_spec",
    "gpu_resources",
    "count_gpus",
    "count_accelerators",
    "accelerator_cluster",
    "gpu_worker_threads",
    "dashboard_link",
    "worker_allocator_env",
    "WORKER_ALLOCATOR_ENV",
]

#: Cluster kinds ``--cluster`` names; anything else is a scheduler address.
KINDS = ("local", "local-cuda", "slurm", "kubernetes")

#: Worker resource that marks one GPU.
GPU = "GPU"

#: glibc allocator settings for worker processes. Dask's default
#: ``MALLOC_TRIM_THRESHOLD_=65536`` turns off glibc's adaptive mmap
#: threshold, so every buffer over 128 KiB (each decoded zarr chunk) is a
#: fresh mmap and page-faulted again; measured, that made block tasks 30-45%
#: slower. Buffers under 8 MiB now reuse the heap, larger ones (a tile, a
#: block's image) are still mapped and given back on free, and free heap is
#: trimmed above 64 MiB, so worker memory stays bounded.
WORKER_ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(8 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20),
}


@contextlib.contextmanager
def worker_allocator_env() -> Iterator[None]:
    """While clusters start here, their worker processes get :data:`WORKER_ALLOCATOR_ENV`.

    The variables join dask's ``distributed.nanny.pre-spawn-environ``, which
    the nanny sets before it spawns a worker (glibc reads them at process
    start). A variable already set in this process's environment still wins,
    so ``MALLOC_TRIM_THRESHOLD_=65536 tiled-seg run ...`` restores dask's own.
    """
    current = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {**current, **WORKER_ALLOCATOR_ENV}}):
        yield


def cluster_config(target: str | None, base: ClusterConfig | None = None) -> ClusterConfig:
    """``base`` (default: a local cluster) with its kind set from ``--cluster TARGET``.

    ``TARGET`` is one of :data:`KINDS` or a scheduler address
    (``tcp://host:8786``); None keeps ``base``.
    """
    base = base or ClusterConfig()
    if not target:
        return base
    if target in KINDS:
        return base.model_copy(update={"kind": target})
    if "://" not in target and ":" not in target:
        raise ConfigError(
            f"--cluster {target!r} is neither a kind ({', '.join(KINDS)}) nor a scheduler "
            "address such as tcp://host:8786."
        )
    return base.model_copy(update={"kind": "address", "address": target})


def _optional(module: str, kind: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise DependencyError(
            f"--cluster {kind} needs {module.split('.')[0].replace('_', '-')} ({error}); "
            f"install it with pip install 'tiled-seg[{extra}]' or use --cluster local."
        ) from None


def count_gpus() -> int:
    """NVIDIA GPUs visible to this process (0 when there is no driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        import pynvml
    except ImportError:
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    try:
        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0


def _local_cuda(config: ClusterConfig) -> Any:
    if count_gpus() == 0:
        raise ClusterError(
            "--cluster local-cuda found no GPU on this machine (no NVIDIA device or driver); "
            "use --cluster local to run on the CPU."
        )
    dask_cuda = _optional("dask_cuda", "local-cuda", "cuda")
    kwargs: dict[str, Any] = {
        "threads_per_worker": gpu_worker_threads(config),
        "memory_limit": config.memory_limit,
        "resources": {GPU: 1},
    }
    if config.workers:
        kwargs["n_workers"] = config.workers
    return dask_cuda.LocalCUDACluster(**kwargs)


def gpu_worker_threads(config: ClusterConfig) -> int:
    """Threads of each local-cuda worker: the configured number, else this machine's cores per GPU.

    Predict tasks hold the worker's one ``GPU`` resource, so one thread feeds
    the GPU while the others prepare and postprocess tiles beside it.
    """
    if config.gpu_worker_threads:
        return config.gpu_worker_threads
    gpus = config.workers or max(count_gpus(), 1)
    return max((os.cpu_count() or 1) // gpus, 1)


def accelerator_cluster(cpu_workers: int, *, cpu_threads: int = 1, processes: bool = True) -> Any:
    """A local cluster with one simulated accelerator: the layout a GPU machine gets, on CPUs.

    One single-threaded worker advertises the ``GPU`` resource, so it runs
    the predict tasks and nothing else competes for its thread; ``cpu_workers``
    workers with ``cpu_threads`` threads each run prepare, postprocess and
    the other stages. ``processes=False`` keeps every worker in this process.
    """
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    kind = Nanny if processes else Worker
    common = {"memory_limit": "auto"} if processes else {}
    workers: dict[str, Any] = {
        "accelerator": {"cls": kind, "options": {"nthreads": 1, "resources": {GPU: 1}, **common}},
    }
    for i in range(cpu_workers):
        workers[f"cpu-{i}"] = {"cls": kind, "options": {"nthreads": cpu_threads, **common}}
    scheduler = {"cls": Scheduler, "options": {"dashboard": False}}
    with worker_allocator_env():
        return SpecCluster(workers=workers, scheduler=scheduler)


def slurm_cluster(config: SlurmConfig) -> Any:
    """A dask-jobqueue ``SLURMCluster`` (no job submitted until it scales).

    Its ``job_script()`` shows the batch script each job runs.
    """
    jobqueue = _optional("dask_jobqueue", "slurm", "cluster")
    directives = list(config.job_extra_directives)
    worker_args: list[str] = []
    processes = config.processes
    if config.gpus_per_job:
        directives.append(f"--gres=gpu:{config.gpus_per_job}")
        processes = config.gpus_per_job
        worker_args += ["--resources", f"{GPU}=1"]
    if config.cores < processes:
        raise ConfigError(
            f"cluster.slurm.cores ({config.cores}) is less than the {processes} worker "
            "processes per job; raise cores or lower processes/gpus_per_job."
        )
    return jobqueue.SLURMCluster(
        queue=config.queue,
        account=config.account,
        walltime=config.walltime,
        cores=config.cores,
        processes=processes,
        memory=config.memory,
        job_extra_directives=directives,
        job_script_prologue=[*_exports(WORKER_ALLOCATOR_ENV), *config.job_script_prologue],
        worker_extra_args=worker_args,
        scheduler_options={"dashboard_address": ":8787"},
    )


def _exports(environ: dict[str, str]) -> list[str]:
    return [f"export {name}={value}" for name, value in environ.items()]


def kubernetes_spec(config: KubernetesConfig, name: str = "tiled-seg") -> dict[str, Any]:
    """The ``DaskCluster`` resource (dask-kubernetes operator) for ``config``.

    Workers get CPU and memory requests and limits, plus an
    ``nvidia.com/gpu`` limit and the worker resource ``GPU`` when
    ``gpus_per_worker`` > 0; the scheduler gets CPU and memory only.
    """
    operator = _optional("dask_kubernetes.operator", "kubernetes", "cluster")
    compute = {"cpu": config.cpu, "memory": config.memory}
    # A GPU worker gets every core of its pod: one thread feeds the GPU, the
    # others prepare and postprocess tiles; a CPU worker runs one thread.
    threads = max(int(_cpu_cores(config.cpu)), 1) if config.gpus_per_worker else 1
    command = ["dask-worker", "--nthreads", str(threads)]
    worker_limits: dict[str, Any] = dict(compute)
    if config.gpus_per_worker:
        worker_limits["nvidia.com/gpu"] = str(config.gpus_per_worker)
        command += ["--resources", f"{GPU}={config.gpus_per_worker}"]
    spec = operator.make_cluster_spec(
        name=name,
        image=config.image,
        n_workers=config.n_workers,
        resources={"requests": dict(compute), "limits": dict(compute)},
        env={**WORKER_ALLOCATOR_ENV, **config.env},
        worker_command=command,
    )
    spec["spec"]["worker"]["spec"]["containers"][0]["resources"] = {
        "requests": dict(compute),
        "limits": worker_limits,
    }
    return spec


def _cpu_cores(quantity: str) -> float:
    """Cores of a Kubernetes CPU quantity (``"4"``, ``"500m"``)."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _kubernetes(config: KubernetesConfig) -> Any:
    operator = _optional("dask_kubernetes.operator", "kubernetes", "cluster")
    spec = kubernetes_spec(config, name=f"tiled-seg-{uuid.uuid4().hex[:8]}")
    cluster = operator.KubeCluster(custom_cluster_spec=spec, namespace=config.namespace)
    if config.adaptive:
        cluster.adapt(minimum=config.minimum_workers, maximum=config.maximum_workers)
    return cluster


def make_cluster(config: ClusterConfig) -> Any:
    """Start the cluster ``config`` describes (not for kind ``address``)."""
    if config.kind == "local":
        with worker_allocator_env():
            return LocalCluster(
                n_workers=config.workers or os.cpu_count() or 1,
                threads_per_worker=config.threads_per_worker,
                processes=True,
                memory_limit=config.memory_limit,
                dashboard_address=":0",
            )
    if config.kind == "local-cuda":
        with worker_allocator_env():
            return _local_cuda(config)
    if config.kind == "slurm":
        cluster = slurm_cluster(config.slurm)
        if config.slurm.adaptive:
            cluster.adapt(minimum_jobs=config.slurm.minimum_jobs,
                          maximum_jobs=config.slurm.maximum_jobs)
        else:
            cluster.scale(jobs=config.slurm.jobs)
        return cluster
    if config.kind == "kubernetes":
        return _kubernetes(config.kubernetes)
    raise ConfigError(f"cluster kind {config.kind!r} has no cluster to start; give an address.")


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str = "auto",
    config: ClusterConfig | None = None,
) -> Iterator[Client]:
    """A dask client for the run, closed (with any cluster it started) on exit.

    Parameters
    ----------
    scheduler : str, optional
        A kind from :data:`KINDS` or the address of a running scheduler
        (``tcp://host:8786``); default ``config.kind`` (``local``).
    workers : int, optional
        Local worker processes; default one per core (per GPU for local-cuda).
    threads_per_worker : int
        Threads per local worker; segmenters are CPU-bound, so 1.
    memory_limit : str
        Per-worker memory limit of a local cluster.
    config : ClusterConfig, optional
        The run configuration's ``cluster`` section; the keywords above
        override its local settings when given.
    """
    base = config or ClusterConfig(threads_per_worker=threads_per_worker,
                                   memory_limit=memory_limit)
    if workers is not None:
        base = base.model_copy(update={"workers": workers})
    chosen = cluster_config(scheduler, base)
    if chosen.kind == "address":
        with Client(chosen.address) as client:
            yield client
        return
    with make_cluster(chosen) as cluster, Client(cluster) as client:
        yield client


def dashboard_link(client: Client) -> str | None:
    """The scheduler's dashboard URL, or None when it serves none (no bokeh)."""
    services = client.scheduler_info().get("services", {})
    return client.dashboard_link if "dashboard" in services else None


def _worker_resources(client: Client) -> list[dict[str, float]]:
    workers = client.scheduler_info().get("workers", {})
    return [dict(info.get("resources") or {}) for info in workers.values()]


def count_accelerators(client: Client) -> int:
    """Workers of ``client`` that advertise the ``GPU`` resource."""
    return sum(1 for res in _worker_resources(client) if res.get(GPU, 0) >= 1)


def gpu_resources(client: Client, backend_uses_gpu: bool) -> dict[str, float] | None:
    """Task resources for segmentation: ``{"GPU": 1}`` or None.

    GPU routing applies only when the backend runs on a GPU and at least one
    worker of ``client`` advertises the ``GPU`` resource; otherwise tasks go
    to any worker (a GPU backend then runs wherever it can).
    """
    if not backend_uses_gpu:
        return None
    if count_accelerators(client):
        return {GPU: 1}
    return None
