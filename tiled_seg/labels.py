"""Small kernels on label images shared by the stages: ranking within groups, renumbering, cleaning.

Plain numpy functions on arrays; the stages (tiling, the backends,
measurement) import them rather than each writing its own sort.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "DENSE_IDS_PER_VALUE",
    "distinct_counts",
    "distinct_ids",
    "first_of_groups",
    "consecutive_lookup",
    "relabel_consecutive",
    "remove_small_labels",
    "keep_largest_piece",
    "fill_small_holes",
]


def first_of_groups(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Index of the first row of each group, rows ranked by ``keys`` within a group.

    Rows are sorted by ``group``, then by each of ``keys`` in turn (ascending;
    negate a key to rank its largest first); the index of the top row of
    every group is returned, groups in ascending order.

    Parameters
    ----------
    group : ndarray of int, shape (n,)
        Group of each row (e.g. a label id).
    *keys : ndarray, shape (n,)
        Ranking within a group, most significant first.

    Returns
    -------
    ndarray of int64
        One row index per distinct group.

    Examples
    --------
    Largest overlap per nucleus, ties to the smaller cell id:

    >>> nucleus = np.array([1, 1, 2, 2, 2])
    >>> overlap = np.array([3, 5, 4, 4, 1])
    >>> cell = np.array([7, 8, 9, 6, 5])
    >>> first_of_groups(nucleus, -overlap, cell).tolist()
    [1, 3]
    """
    group = np.asarray(group)
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((*reversed([np.asarray(k) for k in keys]), group))
    ranked = group[order]
    first = np.r_[True, ranked[1:] != ranked[:-1]]
    return order[first].astype(np.int64)


#: Ids are looked up or counted in arrays indexed by id, rather than sorted,
#: when their range is at most this many times the number of values (label
#: images, their crops, a run's ids 1..N): the arrays stay that small.
DENSE_IDS_PER_VALUE = 4


def _countable(values: np.ndarray) -> bool:
    """Whether ``values`` (1-D) are non-negative integers dense enough to count."""
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return False
    return int(values.max()) <= DENSE_IDS_PER_VALUE * values.size and int(values.min()) >= 0


def distinct_ids(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` of 1-D integers, counted in one pass where they are dense labels.

    >>> distinct_ids(np.array([3, 0, 3, 1])).tolist()
    [0, 1, 3]
    """
    if not _countable(values):
        return np.unique(values)
    return np.flatnonzero(np.bincount(values.astype(np.intp, copy=False))).astype(np.int64)


def distinct_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True, return_counts=True)`` of 1-D integers.

    Labels are dense (ids ``0..n`` with n about the number of objects), so
    they are counted in one pass, not sorted: 4-10x faster on tile-sized
    label images. Sparse or negative values are sorted as ``np.unique``
    does; the results are the same either way (ids as ``int64`` when counted).

    >>> ids, inverse, counts = distinct_counts(np.array([3, 0, 3, 1]))
    >>> ids.tolist(), inverse.tolist(), counts.tolist()
    ([0, 1, 3], [2, 0, 2, 1], [1, 1, 2])
    """
    if not _countable(values):
        return np.unique(values, return_inverse=True, return_counts=True)
    present = np.bincount(values.astype(np.intp, copy=False))
    ids = np.flatnonzero(present)
    rank = np.zeros(present.size, dtype=np.intp)
    rank[ids] = np.arange(ids.size)
    return ids.astype(np.int64), rank[values], present[ids]


def consecutive_lookup(labels: np.ndarray, size: int | None = None) -> np.ndarray:
    """Lookup table renumbering the ids of ``labels`` to 1..N in id order (0 stays 0).

    ``size`` makes the table longer than ``labels.max() + 1``, so that other
    label images whose ids follow these (nucleus ``k`` inside cell ``k``)
    map through the same table; ids absent from ``labels`` map to 0.

    >>> consecutive_lookup(np.array([0, 7, 3]), size=9).tolist()
    [0, 0, 0, 1, 0, 0, 0, 2, 0]
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    length = max(int(labels.max(initial=0)) + 1, size or 0)
    lookup = np.zeros(length, dtype=np.int32)
    lookup[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lookup


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..N in order of first id, as int32 (0 stays 0).

    >>> relabel_consecutive(np.array([[0, 7, 7, 3]])).tolist()
    [[0, 2, 2, 1]]
    """
    return consecutive_lookup(labels)[labels]


def remove_small_labels(labels: np.ndarray, min_area_px: float) -> np.ndarray:
    """Set objects with fewer than ``min_area_px`` pixels to background.

    >>> remove_small_labels(np.array([[1, 1, 0, 2]]), 2).tolist()
    [[1, 1, 0, 0]]
    """
    sizes = np.bincount(labels.ravel())
    small = sizes < min_area_px
    small[0] = False
    return np.where(small[labels], 0, labels)


def keep_largest_piece(labels: np.ndarray) -> np.ndarray:
    """Keep, for every id, only its largest 4-connected piece."""
    from skimage.measure import label

    pieces = label(labels, background=0, connectivity=1).ravel()
    if pieces.max() == 0:
        return labels
    flat = labels.ravel()
    size = np.bincount(pieces)
    piece_id = np.zeros(size.size, dtype=np.int64)
    piece_id[pieces] = flat
    # Largest piece first within each id; equal sizes keep the first in raster order.
    keep = np.zeros(size.size, dtype=bool)
    candidates = np.arange(1, size.size)
    keep[candidates[first_of_groups(piece_id[candidates], -size[candidates], candidates)]] = True
    return np.where(keep[pieces], flat, 0).reshape(labels.shape)


def fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill background components smaller than ``max_area_px`` that are enclosed.

    Components touching the array edge are never filled: whether they are
    holes depends on what lies beyond the tile.
    """
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    fill = sizes < max_area_px
    fill[0] = False
    edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill[edge] = False
    return mask | fill[holes]
