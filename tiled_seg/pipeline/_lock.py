"""One run at a time per output store: a lock file beside the store.

The lock is ``<store>.lock`` (beside the store, like its scratch store, so
replacing the store never removes it) and holds the host, process id and
start time of the run holding it. A lock whose process is gone on this host
is stale and taken over; a lock from another host cannot be checked from
here, so it is refused with the file to remove.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tiled_seg.errors import OutputNotWritableError, RunLockedError
from tiled_seg.io.fs import exists, filesystem, is_url

__all__ = ["LockHolder", "lock_path", "lock_holder", "check_unlocked", "run_lock"]

LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class LockHolder:
    """The run that holds a store's lock."""

    host: str
    pid: int
    started: str

    @property
    def alive(self) -> bool:
        """Whether the holder still runs; True when that cannot be told (another host)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # the process exists, owned by someone else
            return True
        return True


def lock_path(store: str) -> str:
    """The lock file of output ``store``."""
    return f"{str(store).rstrip('/')}{LOCK_SUFFIX}"


def lock_holder(store: str) -> LockHolder | None:
    """Who holds the lock of ``store``; None when nobody does (or the file is unreadable)."""
    path = lock_path(store)
    if not exists(path):
        return None
    fs, inner = filesystem(path)
    try:
        record = json.loads(fs.cat_file(inner))
        return LockHolder(str(record["host"]), int(record["pid"]), str(record["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        # A half-written lock: its writer died between creating and filling it.
        return None


def check_unlocked(store: str) -> None:
    """Raise :class:`RunLockedError` when a live run holds the lock of ``store``."""
    holder = lock_holder(store)
    if holder is not None and holder.alive:
        raise RunLockedError(
            f"another run (process {holder.pid} on {holder.host}, started {holder.started}) "
            f"is writing {store}; wait for it to finish or choose another --output. If no "
            f"run is active, remove {lock_path(store)}."
        )


def _create(path: str, text: str) -> None:
    """Create the lock file, failing with FileExistsError when it exists."""
    if is_url(path):
        # Object stores have no exclusive create; two runs starting in the same
        # instant are not told apart there.
        fs, inner = filesystem(path)
        if fs.exists(inner):
            raise FileExistsError(path)
        fs.pipe_file(inner, text.encode())
        return
    with open(Path(path), "x") as handle:
        handle.write(text)


def _acquire(path: str, record: str) -> None:
    """Create the lock; FileExistsError when it exists, OutputNotWritableError when it cannot."""
    try:
        if not is_url(path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        _create(path, record)
    except FileExistsError:
        if Path(path).parent.is_dir() or is_url(path):
            raise
        error: OSError = NotADirectoryError(f"{Path(path).parent} is a file")
        raise OutputNotWritableError(
            f"cannot create the run lock {path} ({error}); choose a writable --output. "
            "The input was not modified."
        ) from None
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot create the run lock {path} ({error.strerror or error}); choose a "
            "writable --output. The input was not modified."
        ) from error


@contextlib.contextmanager
def run_lock(store: str) -> Iterator[None]:
    """Hold the lock of ``store`` while the block runs; a stale lock is taken over.

    Raises
    ------
    RunLockedError
        A live run holds the lock.
    """
    path = lock_path(store)
    record = json.dumps({
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    try:
        _acquire(path, record)
    except FileExistsError:
        check_unlocked(store)
        # Stale: its run is gone. Replace it, then make sure no other run took it meanwhile.
        fs, inner = filesystem(path)
        fs.rm_file(inner)
        try:
            _acquire(path, record)
        except FileExistsError:
            check_unlocked(store)
            raise RunLockedError(f"another run took the lock {path} just now; retry.") from None
    try:
        yield
    finally:
        fs, inner = filesystem(path)
        with contextlib.suppress(OSError):
            fs.rm_file(inner)
