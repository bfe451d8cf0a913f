"""Errors raised by tiled_seg.

Every error the library raises on purpose derives from :class:`TiledSegError`,
so the CLI can print it as one clear line instead of a traceback. Messages name
the problem and how to fix it.
"""

from __future__ import annotations

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
]


class TiledSegError(ValueError):
    """Base class of all errors raised by tiled_seg on purpose."""


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


class DependencyError(TiledSegError, ImportError):
    """An optional package a command needs is not installed."""
