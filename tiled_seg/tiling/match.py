"""Stitch tile-local labels into one global label image by maximum overlap.

Every tile is segmented on its halo box (core grown by the halo ``H``) and
labels it with local ids ``1..n`` (0 background). Stitching never looks at
1-2 px faces: for each pair of neighbouring tiles (diagonals included) it
compares their labels over the whole *shared region*, the intersection of the
two halo boxes (a band ``2H`` wide along a shared edge, a ``2H x 2H`` square
at a shared corner).

Matching rule
-------------
For local labels ``a`` (tile A) and ``b`` (tile B), with all areas counted in
px inside the shared region only::

    iou(a, b) = overlap(a, b) / (area(a) + area(b) - overlap(a, b))

``a`` and ``b`` are matched when each is the other's best partner (highest
IoU; ties to the smaller id) and ``iou > min_overlap`` (default 0.5).

Why IoU within the shared region, and not overlap / min(area): with
``H >= diameter`` a cell that has a pixel in either core lies wholly inside
both halo boxes, hence wholly inside the shared region, and both tiles see it
whole there: its IoU is 1 when the segmenters agree and stays high under the
small boundary disagreements of independent runs. A cell cut by the border of
the shared region is cut at the same place in both tiles' crops, so clipping
alone lowers neither view; only a segmenter that sees a cell partially at its
own halo edge labels it differently, and such a label has no core pixel in its
tile, so it never reaches the output whether matched or not. overlap/min(area)
would score a label that merges two cells, or a fragment of a split cell, as a
perfect match (1.0) for either part, which is what chains distinct cells;
IoU scores them <= 0.5 for equal parts. With ``min_overlap >= 0.5`` an IoU
match is one-to-one by construction (two labels cannot both cover more than
half of the union with a third), and the mutual-best rule keeps it one-to-one
for lower thresholds.

Joining the matches into global ids is :mod:`tiled_seg.tiling.join`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiled_seg.errors import ConfigError, TileLayoutError
from tiled_seg.labels import distinct_counts, distinct_ids, first_of_groups
from tiled_seg.tiling.grid import Tile

__all__ = ["TileMatches", "match_tiles", "core_label_ids", "check_tile_labels"]

_EMPTY_PAIRS = np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class TileMatches:
    """Matched labels of two neighbouring tiles A and B.

    Attributes
    ----------
    pairs : numpy.ndarray
        ``(k, 2)`` int64 ``(local id in A, local id in B)``, sorted.
    iou : numpy.ndarray
        ``(k,)`` float64 IoU of each pair within the shared region.
    """

    pairs: np.ndarray
    iou: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)


def check_tile_labels(tile: Tile, labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tile.halo.shape or not np.issubdtype(labels.dtype, np.integer):
        raise TileLayoutError(
            f"{name} must be an integer array of tile {tile.index}'s halo box shape {tile.halo.shape}, "
            f"got {labels.dtype} {labels.shape}; pass the labels of the whole halo box."
        )
    return labels


def match_tiles(
    tile_a: Tile,
    labels_a: np.ndarray,
    tile_b: Tile,
    labels_b: np.ndarray,
    *,
    min_overlap: float = 0.5,
) -> TileMatches:
    """Match the labels of two tiles over their shared region.

    Parameters
    ----------
    tile_a, tile_b : Tile
        Two tiles of one grid.
    labels_a, labels_b : numpy.ndarray
        ``(h, w)`` integer local labels covering each tile's halo box, 0 for
        background.
    min_overlap : float
        IoU (within the shared region) a mutual best pair must exceed, in
        ``[0, 1)``. See the module docstring.

    Returns
    -------
    TileMatches
        Empty where the halo boxes do not intersect.
    """
    labels_a = check_tile_labels(tile_a, labels_a, "labels_a")
    labels_b = check_tile_labels(tile_b, labels_b, "labels_b")
    if not 0.0 <= min_overlap < 1.0:
        raise ConfigError(f"min_overlap must be in [0, 1), got {min_overlap!r}; the default 0.5 suits most data.")
    shared = tile_a.halo.intersect(tile_b.halo)
    if shared is None:
        return TileMatches(_EMPTY_PAIRS.copy(), np.zeros(0))
    crop_a = labels_a[shared.relative_to(tile_a.halo).slices].ravel()
    crop_b = labels_b[shared.relative_to(tile_b.halo).slices].ravel()
    ids_a, inv_a, area_a = distinct_counts(crop_a)
    ids_b, inv_b, area_b = distinct_counts(crop_b)
    both = (crop_a != 0) & (crop_b != 0)
    # Compact indices (< pixels in the region) keep the packed int64 code far from overflow.
    codes, _, overlap = distinct_counts(inv_a[both].astype(np.int64) * len(ids_b) + inv_b[both])
    ia, ib = np.divmod(codes, len(ids_b))
    iou = overlap / (area_a[ia] + area_b[ib] - overlap)
    # Mutual best: the top pair of its A label and of its B label (ties to the smaller id).
    best = np.zeros((2, len(iou)), dtype=bool)
    best[0, first_of_groups(ia, -iou, ib)] = True
    best[1, first_of_groups(ib, -iou, ia)] = True
    keep = best[0] & best[1] & (iou > min_overlap)
    pairs = np.stack([ids_a[ia[keep]], ids_b[ib[keep]]], axis=1).astype(np.int64)
    return TileMatches(pairs.reshape(-1, 2), iou[keep].astype(np.float64))


def core_label_ids(tile: Tile, labels: np.ndarray) -> np.ndarray:
    """Sorted local ids (int64) with at least one pixel in the tile's core.

    ``labels`` covers the tile's halo box.
    """
    labels = check_tile_labels(tile, labels, "labels")
    ids = distinct_ids(labels[tile.core_in_halo.slices].ravel())
    return ids[ids != 0].astype(np.int64)
