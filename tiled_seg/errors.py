"""Errors raised by tiled_seg.

Every error the library raises on purpose derives from :class:`TiledSegError`,
so the CLI can print it as one clear line instead of a traceback. Messages name
the problem and how to fix it.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Iterator

__all__ = [
    "TiledSegError",
    "InputNotFoundError",
    "NotNGFFError",
    "InputFormatError",
    "AxesError",
    "ChannelError",
    "PixelSizeError",
    "ConfigError",
    "OutputExistsError",
    "TileLayoutError",
    "BackendError",
    "CorruptChunkError",
    "OutputNotWritableError",
    "ResumeError",
    "RunLockedError",
    "DependencyError",
    "ClusterError",
    "command_line",
]

#: Whether errors are being shown to a command-line user (set by the CLI).
_COMMAND_LINE = contextvars.ContextVar("tiled_seg_command_line", default=False)

#: Flags named in messages and the keyword the Python API takes instead.
#: Messages are written with the flags; a caller of the library reads the keyword.
_KEYWORDS = {"--overwrite": "overwrite=True", "--resume": "resume=True"}
_FLAG = re.compile("(?:" + "|".join(map(re.escape, _KEYWORDS)) + r")(?![\w-])")


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Spell fixes as command-line flags inside the block (the CLI runs each verb in one)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


class TiledSegError(ValueError):
    """Base class of all errors raised by tiled_seg on purpose.

    Messages name fixes as flags (``--overwrite``); outside the CLI they read
    as the Python keyword (``overwrite=True``), so each message is written once.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if _COMMAND_LINE.get():
            return text
        return _FLAG.sub(lambda match: _KEYWORDS[match.group(0)], text)


class InputNotFoundError(TiledSegError, FileNotFoundError):
    """An input path or URL does not exist."""


class NotNGFFError(TiledSegError):
    """A store exists but carries no (readable) OME-NGFF metadata."""


class InputFormatError(TiledSegError):
    """An input file has an unsupported format or an unexpected layout."""


class AxesError(TiledSegError):
    """An image has axes tiled_seg cannot interpret."""


class ChannelError(TiledSegError):
    """Channel names are missing, duplicated, or not in the slide."""


class PixelSizeError(TiledSegError):
    """The pixel size is unknown or implausible."""


class ConfigError(TiledSegError):
    """A run configuration is invalid."""


class OutputExistsError(TiledSegError, FileExistsError):
    """An output exists and ``overwrite`` was not requested."""


class TileLayoutError(TiledSegError):
    """Tile size, halo or chunking do not fit together."""


class BackendError(TiledSegError):
    """A segmentation backend is unknown, not installed, or lacks weights."""


class CorruptChunkError(InputFormatError):
    """A stored chunk of an input array cannot be read or decoded."""


class OutputNotWritableError(TiledSegError, PermissionError):
    """The output store cannot be created or written."""


class ResumeError(TiledSegError):
    """An interrupted run cannot be resumed with the given input and configuration."""


class RunLockedError(TiledSegError):
    """Another run is writing the same output store."""


class DependencyError(TiledSegError, ImportError):
    """An optional package a command needs is not installed."""


class ClusterError(TiledSegError):
    """The requested Dask cluster cannot be started on this machine."""
