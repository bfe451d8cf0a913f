"""Where a slide holds tissue: a coarse mask, and the tiles it leaves empty.

The mask comes from a coarse pyramid level (the level the slide statistics
use): a pixel is tissue where the normalised nuclear or membrane input
exceeds a fraction of its slide-wide Otsu threshold. It is closed (bridging
gaps of 1-2 coarse px) and dilated by at least the halo, so every tile whose
halo box reaches tissue is kept and the labels equal a run that segments
every tile, wherever the skipped area holds no cells.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from tiled_seg.tiling import TileGrid

__all__ = ["tissue_mask", "empty_tiles"]

def tissue_mask(
    nuclear: np.ndarray,
    membrane: np.ndarray | None,
    nuclear_threshold: float,
    membrane_threshold: float,
    dilate_px: int,
) -> np.ndarray:
    """Where a coarse image holds tissue, grown so no cell near it is lost.

    Parameters
    ----------
    nuclear, membrane : ndarray, shape (Y, X), float
        Normalised (0-1) inputs at a coarse pyramid level; membrane may be None.
    nuclear_threshold, membrane_threshold : float
        A pixel is tissue where an input exceeds its threshold (0-1 units).
    dilate_px : int
        Growth (coarse px) after a closing that bridges gaps of 1-2 px: at
        least the halo, so a tile whose halo reaches tissue keeps it.

    Returns
    -------
    ndarray of bool, shape (Y, X)

    Examples
    --------
    >>> image = np.zeros((5, 9), np.float32); image[2, 1] = 1.0
    >>> tissue_mask(image, None, 0.5, 0.5, 1).sum(axis=0).tolist()
    [3, 3, 3, 0, 0, 0, 0, 0, 0]
    """
    mask = nuclear > nuclear_threshold
    if membrane is not None:
        mask |= membrane > membrane_threshold
    mask = ndi.binary_closing(mask, ndi.generate_binary_structure(2, 1), iterations=2) | mask
    if dilate_px > 0:
        # A square step grows by dilate_px in every direction, diagonals included.
        mask = ndi.binary_dilation(mask, ndi.generate_binary_structure(2, 2), iterations=dilate_px)
    return mask


def empty_tiles(grid: TileGrid, mask: np.ndarray) -> list[int]:
    """Indices of the tiles whose core holds no pixel of a coarse tissue ``mask``.

    ``mask`` covers the whole slide at a coarser scale (any shape); a core
    maps to every coarse pixel it touches.

    Examples
    --------
    >>> from tiled_seg.tiling import plan_tiles
    >>> grid = plan_tiles((8, 8), tile_px=4, halo_px=1)
    >>> mask = np.zeros((4, 4), bool); mask[0, 0] = True
    >>> empty_tiles(grid, mask)
    [1, 2, 3]
    """
    scale_y = mask.shape[0] / grid.shape_yx[0]
    scale_x = mask.shape[1] / grid.shape_yx[1]
    empty = []
    for tile in grid.tiles:
        core = tile.core
        y0, y1 = math.floor(core.y0 * scale_y), max(math.ceil(core.y1 * scale_y), math.floor(core.y0 * scale_y) + 1)
        x0, x1 = math.floor(core.x0 * scale_x), max(math.ceil(core.x1 * scale_x), math.floor(core.x0 * scale_x) + 1)
        if not mask[y0:y1, x0:x1].any():
            empty.append(tile.index)
    return empty
