"""The pure per-tile steps of the segment stage: no reads, no writes.

A tile task (:mod:`tiled_seg.pipeline._segment`) reads a tile's channels,
calls :func:`tile_inputs` to build the backend's inputs, runs the backend's
stages and hands the result to :func:`tile_labels`, which picks the labels
the run stitches and checks that they fit the uint32 arrays they go to.
Each function works on arrays alone, so it is tested without a store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tiled_seg.errors import BackendError, TileLayoutError
from tiled_seg.segment.backends.base import Segmentation
from tiled_seg.segment.normalize import build_inputs
from tiled_seg.tiling import Tile

__all__ = ["MAX_LABEL_ID", "tile_inputs", "check_ids", "tile_labels"]

#: Largest label id the uint32 scratch and output arrays hold.
MAX_LABEL_ID = int(np.iinfo(np.uint32).max)


def tile_inputs(
    block: np.ndarray,
    tile: Tile,
    channels: Sequence[str],
    nuclear: Sequence[str],
    membrane: Sequence[str],
    low: Mapping[str, float],
    high: Mapping[str, float],
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Nuclear and membrane inputs of a tile's halo box, and its core's non-finite px.

    Parameters
    ----------
    block : ndarray, shape (C, Y, X)
        The tile's ``channels`` over its halo box.
    tile : Tile
        The tile ``block`` covers.
    channels : sequence of str
        Names of ``block``'s channels.
    nuclear, membrane : sequence of str
        The panel's nuclear and membrane channels.
    low, high : mapping of str to float
        Slide-wide percentiles per channel (:class:`SlideStats`).

    Returns
    -------
    nuclear, membrane : ndarray of float32, shape (Y, X)
        Normalised to 0-1 with the slide-wide numbers; ``membrane`` is None
        without membrane channels.
    nonfinite_px : int
        NaN or infinite pixels in the tile's core over all channels (treated as 0).
    """
    nonfinite = 0
    if not np.issubdtype(block.dtype, np.integer):
        nonfinite = int(np.count_nonzero(~np.isfinite(block[(slice(None), *tile.core_in_halo.slices)])))
    nuclear_input, membrane_input = build_inputs(block, channels, nuclear, membrane, low, high)
    return nuclear_input, membrane_input, nonfinite


def check_ids(labels: np.ndarray, tile: Tile, backend: str) -> None:
    """Refuse label ids the uint32 scratch cannot hold, before they wrap around."""
    if labels.size == 0:
        return
    if int(labels.min()) < 0:
        raise BackendError(
            f"backend {backend!r} returned negative label ids in tile {tile.index}; "
            "labels must be 0 (background) or positive. Fix the backend."
        )
    if int(labels.max()) > MAX_LABEL_ID:
        raise TileLayoutError(
            f"tile {tile.index} (box {tile.halo}) has label id {int(labels.max())}, more than "
            f"uint32 labels hold ({MAX_LABEL_ID}); use a smaller tile size (--tile-px)."
        )


def tile_labels(
    result: Segmentation, tile: Tile, backend: str, primary: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The labels a run stitches (``objects``) and the nuclei linked to them, checked.

    ``primary`` is ``cells`` (objects are the cells, nuclei linked by id) or
    ``nuclei`` (objects are the nuclei; nothing is linked).
    """
    objects, linked = result.cells, result.nuclei
    if primary == "nuclei" and result.nuclei is not None:
        objects, linked = result.nuclei, None
    check_ids(objects, tile, backend)
    if linked is not None:
        check_ids(linked, tile, backend)
    return objects, linked
