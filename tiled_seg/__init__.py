"""tiled_seg: seam-free single-cell segmentation of whole-slide multiplexed images."""

from __future__ import annotations

from typing import Any

from tiled_seg.errors import TiledSegError

__all__ = ["TiledSegError", "open_slide", "read_labels", "write_image", "write_labels"]
__version__ = "0.1.0"

#: Re-exports loaded on first use, so ``import tiled_seg`` (and the CLI's
#: ``--help``) does not pay for zarr and dask.
_LAZY = {"open_slide", "read_labels", "write_image", "write_labels"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tiled_seg import io

        return getattr(io, name)
    raise AttributeError(f"module 'tiled_seg' has no attribute {name!r}")
