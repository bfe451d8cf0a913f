"""Keep the terminal to what a user acts on: no library log noise, no worker tracebacks.

Dask's log lines (``Worker process still alive after 4.0 seconds, killing``,
a worker's ``Compute Failed`` with the traceback of an error the CLI reports
anyway) and zarr's warnings are hidden unless ``--verbose``. Worker
processes read dask's logging settings from the environment when they
start, so setting it here reaches them too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from typing import Iterator

__all__ = ["quiet", "workers_ignore_interrupts"]

#: dask's environment form of ``logging: {distributed: critical}``: a worker logs
#: a failed task as an error, which the CLI reports anyway.
_DASK_LOGGING = "DASK_LOGGING__DISTRIBUTED"


def quiet() -> None:
    """Hide dask's log messages and zarr's warnings, here and in workers; one-line warnings."""
    os.environ.setdefault(_DASK_LOGGING, "critical")
    logging.getLogger("distributed").setLevel(os.environ[_DASK_LOGGING].upper())
    warnings.filterwarnings("ignore", module=r"zarr(\.|$)")
    # Raised inside zarr but attributed to its caller's module by the stack level.
    warnings.filterwarnings("ignore", message=r"Consolidated metadata")
    warnings.formatwarning = _one_line


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
    """A warning as the one line a user reads (``--verbose`` shows where it came from)."""
    return f"Warning: {message}\n"


@contextlib.contextmanager
def workers_ignore_interrupts() -> Iterator[None]:
    """Start worker processes that ignore Ctrl-C while this block runs.

    Ctrl-C reaches every process of the terminal's group; workers started
    with SIGINT ignored keep quiet, and this process stops the run and
    shuts them down. Only an ignored signal survives the start of a new
    process (a handler does not), so Ctrl-C is ignored during the block (the
    cluster's start-up) as well.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
