"""Quality checks of a segmentation: seam diagnostics."""

from __future__ import annotations

import numpy as np

from tiled_seg.evaluate import contingency

__all__ = ["cut_objects"]


def cut_objects(reference: np.ndarray, candidate: np.ndarray, min_fraction: float = 0.2) -> np.ndarray:
    """Reference objects split between two or more candidate objects.

    A reference object counts as cut when at least two candidate objects each
    cover ``min_fraction`` or more of its pixels: the quiet error of a cell cut
    in two at a tile seam.

    Parameters
    ----------
    reference, candidate : ndarray of int, shape (Y, X)
        Label images of the same field (0 = background), e.g. an untiled and a
        tiled run.
    min_fraction : float
        Share (0-1) of the reference object's area a piece must cover.

    Returns
    -------
    ndarray of int64
        Sorted ids of the cut reference objects.

    Examples
    --------
    >>> reference = np.array([[1, 1, 1, 1, 2, 2]])
    >>> candidate = np.array([[5, 5, 6, 6, 7, 7]])
    >>> cut_objects(reference, candidate).tolist()
    [1]
    """
    table = contingency(candidate, reference)
    keep = (table.true_ids > 0) & (table.pred_ids > 0)
    area = np.bincount(table.true_ids, weights=table.counts)
    fraction = table.counts[keep] / area[table.true_ids[keep]]
    pieces = np.bincount(table.true_ids[keep][fraction >= min_fraction], minlength=area.size)
    return np.flatnonzero(pieces >= 2).astype(np.int64)
