"""Per-block partial reductions of pixel counts, channel sums and boxes.

A cell spans several chunks, so nothing per cell can be finished inside one
block. Each block instead returns small partial sums keyed by label id
(:func:`block_partials`); partials from any set of blocks merge with
:func:`combine_partials` in any grouping, and
:func:`tiled_seg.measure._table.cell_table` turns the merged sums into per-cell
counts, means, centroids, boxes and moment features. The pixel pass is one
compiled loop over the block (:mod:`~tiled_seg.measure._kernels`); nothing
loops over cells in Python, and nothing imports dask.
"""

from __future__ import annotations

import numpy as np

from tiled_seg.labels import DENSE_IDS_PER_VALUE
from tiled_seg.measure._kernels import cell_sums, dense_index, label_range

__all__ = ["block_partials", "combine_partials", "empty_partials", "label_index"]

#: Keys whose values are summed when partials merge; box corners take min / max.
#: Coordinate sums (``sum_y`` ... ``sum_xy``) are int64 and exact, so the
#: central moments derived from them do not depend on how blocks were cut.
_SUM_KEYS = (
    "count", "sum", "sum_y", "sum_x", "sum_yy", "sum_xx", "sum_xy", "perimeter",
    "nuc_count", "nuc_sum",
)
_MIN_KEYS = ("min_y", "min_x")


def label_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-zero ids of ``labels`` (sorted) and each pixel's row among them.

    Returns ``ids`` (int64) and ``index``, ravelled like ``labels``, with -1
    for background pixels.
    """
    low, high, n_labelled = label_range(labels)
    if n_labelled == 0:
        return np.zeros(0, np.int64), np.full(labels.size, -1, np.int64)
    if high - low <= DENSE_IDS_PER_VALUE * labels.size:
        # Ids inside one block are usually a narrow range: a dense lookup
        # avoids the sort that np.unique would need.
        return dense_index(labels, low, high)
    flat = labels.ravel()
    labelled = flat > 0
    ids, inverse = np.unique(flat[labelled], return_inverse=True)
    index = np.full(flat.size, -1, np.int64)
    index[labelled] = inverse.ravel()
    return ids.astype(np.int64), index


def empty_partials(n_channels: int, with_nuclei: bool) -> dict[str, np.ndarray]:
    """Partials of a block without any labelled pixel."""
    parts = {
        "label": np.zeros(0, np.int64),
        "count": np.zeros(0, np.int64),
        "sum": np.zeros((0, n_channels)),
        "sum_y": np.zeros(0, np.int64),
        "sum_x": np.zeros(0, np.int64),
        "sum_yy": np.zeros(0, np.int64),
        "sum_xx": np.zeros(0, np.int64),
        "sum_xy": np.zeros(0, np.int64),
        "min_y": np.zeros(0, np.int64),
        "min_x": np.zeros(0, np.int64),
        "max_y": np.zeros(0, np.int64),
        "max_x": np.zeros(0, np.int64),
    }
    if with_nuclei:
        parts["nuc_count"] = np.zeros(0, np.int64)
        parts["nuc_sum"] = np.zeros((0, n_channels))
        parts["pairs"] = np.zeros((0, 3), np.int64)
    return parts


def block_partials(
    labels: np.ndarray,
    image: np.ndarray,
    origin: tuple[int, int],
    nuclei: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Partial per-label sums of one block.

    Parameters
    ----------
    labels : ndarray, shape (Y, X), integer
        Cell labels of the block, 0 for background.
    image : ndarray, shape (C, Y, X)
        Channel values of the same pixels.
    origin : (int, int)
        Global (y, x) position of the block's first pixel (px).
    nuclei : ndarray, shape (Y, X), optional
        Nucleus labels of the same pixels, 0 for background.

    Returns
    -------
    dict of ndarray
        One row per cell id present: ``label``, ``count`` (px), ``sum``
        ``(n, C)``, ``sum_y`` / ``sum_x`` and ``sum_yy`` / ``sum_xx`` /
        ``sum_xy`` (int64 sums of global pixel coordinates and of their
        products, px and px**2), ``min_y`` / ``min_x`` (inclusive) and ``max_y`` / ``max_x``
        (exclusive) box corners in global px. With ``nuclei``: ``nuc_count``
        and ``nuc_sum`` (the cell's pixels covered by any nucleus) and
        ``pairs``, rows ``(cell, nucleus, overlap_px)``.
    """
    n_channels = image.shape[0]
    height, width = labels.shape
    ids, index = label_index(labels)
    if ids.size == 0:
        return empty_partials(n_channels, nuclei is not None)
    n = ids.size
    exact = np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_
    accumulator = np.int64 if exact else np.float64
    pixels = np.ascontiguousarray(image.reshape(n_channels, height * width))
    if pixels.dtype == np.bool_:
        pixels = pixels.view(np.uint8)
    in_nucleus = np.zeros(0, np.bool_) if nuclei is None else nuclei.ravel() > 0
    count = np.zeros(n, np.int64)
    sums = np.zeros((n, n_channels), accumulator)
    coords = np.zeros((n, 5), np.int64)
    box = np.empty((n, 4), np.int64)
    box[:, :2], box[:, 2:] = np.iinfo(np.int64).max, -1
    nuc_count = np.zeros(n, np.int64)
    nuc_sums = np.zeros((n, n_channels) if nuclei is not None else (0, 0), accumulator)
    cell_sums(index, width, pixels, in_nucleus, int(origin[0]), int(origin[1]),
              count, sums, coords, box, nuc_count, nuc_sums)
    parts = {
        "label": ids, "count": count, "sum": sums.astype(np.float64),
        "sum_y": coords[:, 0], "sum_x": coords[:, 1],
        "sum_yy": coords[:, 2], "sum_xx": coords[:, 3], "sum_xy": coords[:, 4],
        "min_y": box[:, 0], "min_x": box[:, 1], "max_y": box[:, 2] + 1, "max_x": box[:, 3] + 1,
    }
    if nuclei is not None:
        parts["nuc_count"], parts["nuc_sum"] = nuc_count, nuc_sums.astype(np.float64)
        flat = labels.ravel()
        cells, nucleus_ids = flat[in_nucleus & (index >= 0)], nuclei.ravel()[in_nucleus & (index >= 0)]
        codes = (cells.astype(np.uint64) << np.uint64(32)) | nucleus_ids.astype(np.uint64)
        pair_codes, overlap = np.unique(codes, return_counts=True)
        parts["pairs"] = np.stack(
            [
                (pair_codes >> np.uint64(32)).astype(np.int64),
                (pair_codes & np.uint64(0xFFFFFFFF)).astype(np.int64),
                overlap.astype(np.int64),
            ],
            axis=1,
        )
    return parts


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort order of ``keys`` and the start of each run of equal keys."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if keys.size else np.zeros(0, np.intp)
    return order, starts


def combine_partials(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge partials of disjoint pixel sets into one partial (same keys).

    Counts and sums add, box corners take the min / max, nucleus overlaps add
    per (cell, nucleus) pair. The result is sorted by label id. Values of one
    id are added in the order of ``parts``, so the merge is reproducible.
    Dense ids (a run's ``1..N``) are merged into rows found by lookup, one
    part at a time; other ids through one sorted concatenation, which holds
    the parts twice more.
    """
    rows = sum(p["label"].size for p in parts)
    high = max((int(p["label"].max()) for p in parts if p["label"].size), default=0)
    dense = 0 < high <= DENSE_IDS_PER_VALUE * rows
    out = _combine_by_lookup(parts, high) if dense else _combine_sorted(parts)
    if "pairs" in parts[0]:
        pairs = np.concatenate([p["pairs"] for p in parts])
        codes = (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64)
        pair_order, pair_starts = _runs(codes)
        if pair_starts.size:
            first = pairs[pair_order][pair_starts]
            overlap = np.add.reduceat(pairs[pair_order, 2], pair_starts)
            out["pairs"] = np.stack([first[:, 0], first[:, 1], overlap], axis=1)
        else:
            out["pairs"] = pairs[:0]
    return out


def _reduction(key: str) -> np.ufunc:
    if key in _SUM_KEYS:
        return np.add
    return np.minimum if key in _MIN_KEYS else np.maximum


def _combine_by_lookup(parts: list[dict[str, np.ndarray]], high: int) -> dict[str, np.ndarray]:
    """Every key but ``pairs`` of :func:`combine_partials`, for ids up to ``high``."""
    present = np.zeros(high + 1, dtype=bool)
    for part in parts:
        present[part["label"]] = True
    ids = np.flatnonzero(present)
    row_of = np.zeros(high + 1, dtype=np.intp)
    row_of[ids] = np.arange(ids.size)
    rows = [row_of[part["label"]] for part in parts]
    out: dict[str, np.ndarray] = {"label": ids.astype(np.int64)}
    for key, first in parts[0].items():
        if key in ("label", "pairs"):
            continue
        reduce = _reduction(key)
        merged = np.empty((ids.size, *first.shape[1:]), dtype=first.dtype)
        seen = np.zeros(ids.size, dtype=bool)
        for part, row in zip(parts, rows):
            # A row's first value is copied, not reduced with a start value: 0 + x
            # or min(max, x) would be the same, but copying needs no identity.
            new = ~seen[row]
            merged[row[new]] = part[key][new]
            old = ~new
            merged[row[old]] = reduce(merged[row[old]], part[key][old])
            seen[row] = True
        out[key] = merged
    return out


def _combine_sorted(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every key but ``pairs`` of :func:`combine_partials`, through one stable sort by id."""
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "pairs"}
    order, starts = _runs(merged["label"])
    out: dict[str, np.ndarray] = {"label": merged["label"][order][starts]}
    for key, values in merged.items():
        if key == "label":
            continue
        ordered = values[order]
        out[key] = _reduction(key).reduceat(ordered, starts, axis=0) if starts.size else ordered[:0]
    return out
