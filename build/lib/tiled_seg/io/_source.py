"""The record every input reader hands to :func:`tiled_seg.io.convert.convert`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da

__all__ = ["SourceImage"]


@dataclass(frozen=True)
class SourceImage:
    """One multichannel image read (lazily) from a TIFF, MIBItiff or IMC file.

    Attributes
    ----------
    data : dask.array.Array
        Pixel values, ``(C, Y, X)``, in the file's dtype.
    channel_names : tuple of str or None
        Names found in the file, or None when it carries none.
    pixel_size_um : float or None
        Pixel size (um) found in the file, or None.
    name : str
        Name of the image, written as the multiscale name.
    channel_metadata : tuple of dict or None
        Extra per-channel keys for the ``omero`` metadata (e.g. IMC metal tags).
    """

    data: da.Array
    channel_names: tuple[str, ...] | None
    pixel_size_um: float | None
    name: str
    channel_metadata: tuple[dict[str, Any], ...] | None = None
