"""Cell neighbour graphs: pixel contact, centroid distance and border distance.

Touching: two cells touch when a pixel of one is adjacent to a pixel of the
other, with ``connectivity`` 1 (edge neighbours, 4-connectivity, the default)
or 2 (edge and corner neighbours, 8-connectivity). Background between cells
breaks contact. Distance: two cells are neighbours when their centroids are
at most ``dmax`` apart (steinbock's ``measure neighbors --type centroids``).
Border distance: two cells are neighbours when the smallest Euclidean
distance between a pixel centre of one and a pixel centre of the other is at
most ``dmax`` (steinbock's ``--type borders``; touching cells are 1 px apart).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from tiled_seg.errors import ConfigError
from tiled_seg.labels import first_of_groups
from tiled_seg.measure._kernels import contacts

__all__ = ["touching_pairs", "unique_pairs", "centroid_pairs", "border_pairs", "closest_per_pair"]


def touching_pairs(labels: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Pairs of distinct labels that touch inside a ``(Y, X)`` block.

    Returns
    -------
    ndarray, shape (n, 2), int64
        Unique rows ``(a, b)`` with ``0 < a < b``.
    """
    labels = np.ascontiguousarray(labels)
    pairs = np.zeros((contacts(labels, connectivity, np.zeros((0, 2), np.int64), False), 2), np.int64)
    contacts(labels, connectivity, pairs, True)
    return unique_pairs(pairs)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct rows of an ``(n, 2)`` int64 pair array of non-negative ids, sorted."""
    if not pairs.size:
        return np.zeros((0, 2), np.int64)
    pairs = pairs.reshape(-1, 2)
    if pairs.max() >= 2**32:
        return np.unique(pairs, axis=0)
    # One 64-bit code per pair: a 1-D unique sorts far faster than rows.
    codes = np.unique((pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64))
    return np.stack([codes >> np.uint64(32), codes & np.uint64(0xFFFFFFFF)], axis=1).astype(np.int64)


def centroid_pairs(centroids: np.ndarray, dmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of points at most ``dmax`` apart, and their distances.

    Parameters
    ----------
    centroids : ndarray, shape (n, 2)
        Point coordinates (any unit; ``dmax`` in the same unit).
    dmax : float
        Largest distance.

    Returns
    -------
    pairs : ndarray, shape (m, 2), int64
        Row indices ``(i, j)`` with ``i < j``, sorted.
    distances : ndarray, shape (m,)
    """
    if len(centroids) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    pairs = cKDTree(centroids).query_pairs(r=dmax, output_type="ndarray").astype(np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs.reshape(0, 2)
    distances = np.linalg.norm(centroids[pairs[:, 0]] - centroids[pairs[:, 1]], axis=1)
    return pairs, distances


def border_pairs(
    labels: np.ndarray, dmax: float, core: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of distinct labels at most ``dmax`` px apart, with their distance.

    The distance of two cells is the smallest distance between pixel centres
    of the two. It is reached at border pixels (pixels with a 4-neighbour of
    another value): from an interior pixel a step towards the other cell
    stays in the cell and gets closer. So only border pixels are compared.

    Parameters
    ----------
    labels : ndarray, shape (Y, X), integer
        Labels, 0 = background.
    dmax : float
        Largest border distance (px).
    core : (y0, x0, y1, x1), optional
        Box (px, max exclusive) that one pixel of each pair must lie in;
        default the whole array. With a halo of ``floor(dmax) + 1`` px
        around the core, every pair with a pixel in the core is found at its
        true distance.

    Returns
    -------
    pairs : ndarray, shape (n, 2), int64
        Unique rows ``(a, b)`` with ``0 < a < b``, sorted.
    distances : ndarray, shape (n,), float64
        Border distance of each pair (px).
    """
    if not dmax > 0:
        raise ConfigError(f"border distance must be > 0 px; got {dmax}.")
    border = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        first = [slice(None)] * 2
        second = [slice(None)] * 2
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        differ = labels[tuple(first)] != labels[tuple(second)]
        border[tuple(first)] |= differ
        border[tuple(second)] |= differ
    border &= labels > 0
    points = np.argwhere(border)
    y0, x0, y1, x1 = core if core is not None else (0, 0, *labels.shape)
    inside = (points[:, 0] >= y0) & (points[:, 0] < y1) & (points[:, 1] >= x0) & (points[:, 1] < x1)
    if not inside.any() or len(points) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    # The tree compares squared distances, so sqrt(k) <= dmax can fail at
    # dmax = sqrt(k): search a little wider and decide on the distance itself.
    found = cKDTree(points[inside]).sparse_distance_matrix(
        cKDTree(points), dmax * (1 + 1e-9), output_type="ndarray"
    )
    first, second = points[inside][found["i"]], points[found["j"]]
    distances = np.sqrt(((first - second) ** 2).sum(axis=1))
    a = labels[tuple(first.T)].astype(np.int64)
    b = labels[tuple(second.T)].astype(np.int64)
    keep = (a != b) & (distances <= dmax)
    a, b = a[keep], b[keep]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    return closest_per_pair(pairs, distances[keep])


def closest_per_pair(pairs: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of an ``(n, 2)`` pair array, sorted, each with its smallest distance."""
    if not len(pairs):
        return np.zeros((0, 2), np.int64), np.zeros(0)
    # One group per distinct pair, in (a, b) order: a code that sorts as the pair does.
    code = pairs[:, 0].astype(np.int64) * (int(pairs[:, 1].max()) + 1) + pairs[:, 1]
    closest = first_of_groups(code, distances)
    return pairs[closest].astype(np.int64), distances[closest].astype(np.float64)
