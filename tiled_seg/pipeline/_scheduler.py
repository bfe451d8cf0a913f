"""Send the dask computations of a run to the run's client, not dask's default scheduler.

``dask.config.set(scheduler=client)`` alone is not enough: the config is
process-wide, so runs in concurrent threads (``run_batch``) undo each other's
setting out of order and can leave a :class:`~distributed.Client` behind in
the config, which then breaks starting new worker processes (their nanny
pickles the config). Instead each run makes its client current in its own
thread (:meth:`distributed.Client.as_current`, a context variable) while the
process-wide config tells dask to use "the current distributed client"; that
setting is made by the first run in flight and undone by the last.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import dask
from distributed import Client


class _SharedSetting:
    """A dask config setting held while at least one user needs it."""

    def __init__(self, **values: Any) -> None:
        self._values = values
        self._lock = threading.Lock()
        self._users = 0
        self._setting: dask.config.set | None = None

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._setting = dask.config.set(**self._values)
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._setting is not None:
                self._setting.__exit__(None, None, None)
                self._setting = None


_USE_CURRENT_CLIENT = _SharedSetting(scheduler="dask.distributed")


@contextlib.contextmanager
def computing_on(client: Client) -> Iterator[None]:
    """Run every dask computation this thread starts inside the block on ``client``."""
    _USE_CURRENT_CLIENT.acquire()
    try:
        with client.as_current():
            yield
    finally:
        _USE_CURRENT_CLIENT.release()
