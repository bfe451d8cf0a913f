"""Nuclear expansion, one task per block (stage 7).

Each block (whole chunks, about ``BLOCK_PX`` on a side) is read directly and expanded with :func:`skimage.segmentation.expand_labels` after
borrowing a halo of ``ceil(distance_px) + 1`` px from its neighbours. A pixel
can only be claimed by a label within ``distance_px`` of it, and every such
label lies inside the halo, so the nearest-label search (and its tie rule,
which depends only on the relative positions of the competing labels) is the
same in the block as on the whole image: the result equals the whole-image
``expand_labels`` byte for byte. Each pixel keeps exactly one owner and no
label is created or removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from skimage.segmentation import expand_labels

from tiled_seg.blocks import Progress, shared
from tiled_seg.errors import AxesError, ConfigError, InputFormatError, PixelSizeError
from tiled_seg.io.ngff import label_array, open_slide, write_labels
from tiled_seg.io.regions import RegionReader
from tiled_seg.tiling import BLOCK_PX, Box, plan_blocks

__all__ = ["expand_block", "expand_labels_blocks", "expand_labels_dask", "expand_store", "ExpandResult"]


@dataclass(frozen=True)
class ExpandResult:
    """What :func:`expand_store` wrote.

    Attributes
    ----------
    path : str
        Path of the written label group, ``store/labels/<target>``.
    radius_um : float
        Expansion radius in um.
    distance_px : float
        Expansion radius in px.
    """

    path: str
    radius_um: float
    distance_px: float


def expand_block(labels: RegionReader, block: Box, distance_px: float) -> np.ndarray:
    """``expand_labels`` of one block: read it with its halo, expand, keep the block.

    The halo is ``ceil(distance_px) + 1`` px, so the block equals the same
    pixels of the whole-image expansion.
    """
    window = block.grow(math.ceil(distance_px) + 1, labels.shape_yx)
    expanded = expand_labels(labels.read(window), distance_px)
    return expanded[block.relative_to(window).slices]


def expand_labels_blocks(
    labels: RegionReader, distance_px: float, block_px: int = BLOCK_PX
) -> da.Array:
    """Expand ``(Y, X)`` labels by ``distance_px`` without overlap, one task per block.

    Each task reads its block and halo directly (:func:`expand_block`); the
    blocks are whole chunks of ``labels``, so storing the result writes each
    chunk from one task.

    Parameters
    ----------
    labels : RegionReader
        Label image, 0 for background (a zarr, dask or numpy array).
    distance_px : float
        Euclidean expansion distance in px (>= 0).
    block_px : int
        Block side (px), rounded down to whole chunks.

    Returns
    -------
    dask array, shape (Y, X)
        Equal to ``skimage.segmentation.expand_labels`` on the whole image.
    """
    if len(labels.axes) != 2:
        raise AxesError(f"labels must be (Y, X); got axes {labels.axes}.")
    dtype = np.dtype(labels.array.dtype)
    if not np.issubdtype(dtype, np.integer):
        raise InputFormatError(f"labels must have an integer dtype, got {dtype}; pass a label image (0 background, positive ids).")
    if not (distance_px >= 0 and math.isfinite(distance_px)):
        raise ConfigError(f"expansion distance must be a finite number >= 0 px; got {distance_px}.")
    blocks = plan_blocks(labels.shape_yx, labels.chunk_yx, block_px)
    task = dask.delayed(expand_block, pure=True)
    labels_key = shared(labels)
    pieces = {(b.y0, b.x0): da.from_delayed(task(labels_key, b, distance_px), b.shape, dtype) for b in blocks}
    rows = sorted({b.y0 for b in blocks})
    cols = sorted({b.x0 for b in blocks})
    return da.block([[pieces[(y, x)] for x in cols] for y in rows])


def expand_labels_dask(labels: da.Array, distance_px: float, block_px: int = BLOCK_PX) -> da.Array:
    """:func:`expand_labels_blocks` of a ``(Y, X)`` dask (or numpy) array.

    >>> import numpy as np
    >>> expand_labels_dask(np.array([[0, 1, 0, 0, 2]]), 1.0).compute().tolist()
    [[1, 1, 1, 2, 2]]
    """
    labels = da.asarray(labels)
    if labels.ndim != 2:
        raise AxesError(f"labels must be (Y, X); got shape {labels.shape}.")
    return expand_labels_blocks(RegionReader(labels), distance_px, block_px)


def expand_store(
    store: str | Path,
    source: str = "nuclei",
    target: str = "cells_expanded",
    radius_um: float = 2.0,
    *,
    pixel_size_um: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExpandResult:
    """Expand ``store/labels/<source>`` by ``radius_um`` into ``labels/<target>``.

    Parameters
    ----------
    store : str or Path
        OME-NGFF store holding the image and the source labels.
    source, target : str
        Label image names to read and to write.
    radius_um : float
        Expansion radius in um, turned into px with the pixel size.
    pixel_size_um : float, optional
        Pixel size in um; taken from the store's metadata when not given.
    overwrite : bool
        Replace an existing ``labels/<target>``.
    progress : callable, optional
        ``progress("write <target>", done, total)`` as blocks are expanded and written.

    Returns
    -------
    ExpandResult
    """
    store = str(store)
    if source == target:
        raise ConfigError(
            f"source and target label names are both {source!r}; inputs are never "
            "modified, so choose another --target."
        )
    if pixel_size_um is None:
        pixel_size_um = open_slide(store).pixel_size_um
    if pixel_size_um is None:
        raise PixelSizeError(
            f"{store} does not record a pixel size; give it with --pixel-size-um."
        )
    if not radius_um >= 0:
        raise ConfigError(f"expansion radius must be >= 0 um; got {radius_um}.")
    labels = RegionReader(label_array(store, source))
    distance_px = float(radius_um) / float(pixel_size_um)
    expanded = expand_labels_blocks(labels, distance_px)
    write_labels(
        store, target, expanded, pixel_size_um,
        chunk_px=labels.chunk_yx[0], overwrite=overwrite, progress=progress,
    )
    return ExpandResult(
        path=f"{store.rstrip('/')}/labels/{target}", radius_um=float(radius_um), distance_px=distance_px
    )
