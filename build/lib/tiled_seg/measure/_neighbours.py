"""Cell neighbour graphs: pixel contact and centroid distance.

Touching: two cells touch when a pixel of one is adjacent to a pixel of the
other, with ``connectivity`` 1 (edge neighbours, 4-connectivity, the default)
or 2 (edge and corner neighbours, 8-connectivity). Background between cells
breaks contact. Distance: two cells are neighbours when their centroids are
at most ``dmax`` apart (steinbock's ``measure neighbors --type centroids``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["touching_pairs", "unique_pairs", "centroid_pairs"]


def touching_pairs(labels: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Pairs of distinct labels that touch inside a ``(Y, X)`` block.

    Returns
    -------
    ndarray, shape (n, 2), int64
        Unique rows ``(a, b)`` with ``0 < a < b``.
    """
    shifts = [(labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])]
    if connectivity == 2:
        shifts += [(labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])]
    found = []
    for first, second in shifts:
        contact = (first != second) & (first > 0) & (second > 0)
        a, b = first[contact].astype(np.int64), second[contact].astype(np.int64)
        found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return unique_pairs(np.concatenate(found))


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct rows of an ``(n, 2)`` int64 pair array, sorted."""
    if not pairs.size:
        return np.zeros((0, 2), np.int64)
    return np.unique(pairs.reshape(-1, 2), axis=0)


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
