"""Where a run's tasks execute: a local cluster or an existing scheduler."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from distributed import Client, LocalCluster

__all__ = ["connect"]


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str = "auto",
) -> Iterator[Client]:
    """A dask client for the run, closed (with its local cluster) on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); None starts a
        ``LocalCluster`` of worker processes.
    workers : int, optional
        Local worker processes; default one per core.
    threads_per_worker : int
        Threads per local worker; segmenters are CPU-bound, so 1.
    memory_limit : str
        Per-worker memory limit of a local cluster.
    """
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n_workers = workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        yield client
