"""Per-block partial reductions of pixel counts, channel sums and boxes.

A cell spans several chunks, so nothing per cell can be finished inside one
block. Each block instead returns small partial sums keyed by label id
(:func:`block_partials`); partials from any set of blocks merge with
:func:`combine_partials` in any grouping, and
:func:`tiled_seg.measure._table.cell_table` turns the merged sums into per-cell
counts, means, centroids, boxes and moment features. All
kernels are vectorised over pixels (one stable sort per block, then
``reduceat``); none loops over cells, and none imports dask.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["block_partials", "combine_partials", "empty_partials", "group_ids"]

#: Keys whose values are summed when partials merge; box corners take min / max.
#: Coordinate sums (``sum_y`` ... ``sum_xy``) are int64 and exact, so the
#: central moments derived from them do not depend on how blocks were cut.
_SUM_KEYS = (
    "count", "sum", "sum_y", "sum_x", "sum_yy", "sum_xx", "sum_xy", "perimeter",
    "nuc_count", "nuc_sum",
)
_MIN_KEYS = ("min_y", "min_x")


def group_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids of ``labels`` (ravelled) and each pixel's index into them."""
    flat = labels.ravel()
    low, high = int(flat.min()), int(flat.max())
    if high - low <= 4 * flat.size:
        # Ids inside one chunk are usually a narrow range: a dense lookup
        # avoids the sort that np.unique would need.
        dense = (flat - low).astype(np.intp, copy=False)
        present = np.flatnonzero(np.bincount(dense))
        lookup = np.zeros(high - low + 1, dtype=np.intp)
        lookup[present] = np.arange(present.size)
        return present.astype(np.int64) + low, lookup[dense]
    ids, inverse = np.unique(flat, return_inverse=True)
    return ids.astype(np.int64), inverse.ravel()


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
    flat = labels.ravel()
    foreground = np.flatnonzero(flat)
    if foreground.size == 0:
        return empty_partials(n_channels, nuclei is not None)
    ids, inverse = group_ids(flat[foreground])
    n = ids.size
    # One stable sort groups each cell's pixels (split by inside / outside a
    # nucleus) into runs in raster order; every sum is then one reduceat.
    key = inverse.astype(np.int64)
    if nuclei is not None:
        in_nucleus = nuclei.ravel()[foreground] > 0
        key = 2 * key + in_nucleus
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_cell = ordered[starts] >> 1 if nuclei is not None else ordered[starts]
    pixels = foreground[order]
    rows, cols = pixels // width, pixels % width
    exact = np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_
    values = image.reshape(n_channels, height * width)[:, pixels]
    run_sums = np.add.reduceat(values, starts, axis=1, dtype=np.int64 if exact else np.float64)
    run_sums = run_sums.T.astype(np.float64)
    run_count = np.diff(np.r_[starts, pixels.size])

    def per_cell(run_values: np.ndarray, reduce: np.ufunc, start: float) -> np.ndarray:
        out = np.full((n, *run_values.shape[1:]), start, dtype=run_values.dtype)
        reduce.at(out, run_cell, run_values)
        return out

    count = per_cell(run_count, np.add, 0)
    y0, x0 = origin
    parts = {"label": ids, "count": count, "sum": per_cell(run_sums, np.add, 0)}
    parts.update(_coordinate_sums(rows, cols, starts, per_cell, y0, x0, count))
    for name, coords, reduce, start, offset in (
        ("min_y", rows, np.minimum, height, y0),
        ("min_x", cols, np.minimum, width, x0),
        ("max_y", rows, np.maximum, -1, y0 + 1),
        ("max_x", cols, np.maximum, -1, x0 + 1),
    ):
        parts[name] = per_cell(reduce.reduceat(coords, starts), reduce, start) + offset
    if nuclei is not None:
        inside = (ordered[starts] & 1).astype(bool)
        nuc_count = np.zeros(n, np.int64)
        nuc_count[run_cell[inside]] = run_count[inside]
        nuc_sum = np.zeros((n, n_channels))
        nuc_sum[run_cell[inside]] = run_sums[inside]
        parts["nuc_count"], parts["nuc_sum"] = nuc_count, nuc_sum
        cells, nucleus_ids = flat[foreground][in_nucleus], nuclei.ravel()[foreground][in_nucleus]
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


def _coordinate_sums(
    rows: np.ndarray, cols: np.ndarray, starts: np.ndarray,
    per_cell: Callable[[np.ndarray, np.ufunc, float], np.ndarray],
    y0: int, x0: int, count: np.ndarray,
) -> dict[str, np.ndarray]:
    """Exact int64 sums of global coordinates and their products per cell.

    Sums of block-local coordinates (``rows``, ``cols`` in run order) are
    taken in int64 and moved to global coordinates, so they are exact.
    """
    def total(values: np.ndarray) -> np.ndarray:
        return per_cell(np.add.reduceat(values, starts), np.add, 0)

    sy, sx = total(rows), total(cols)
    syy, sxx, sxy = total(rows * rows), total(cols * cols), total(rows * cols)
    oy, ox = np.int64(y0), np.int64(x0)
    return {
        "sum_y": sy + oy * count,
        "sum_x": sx + ox * count,
        "sum_yy": syy + 2 * oy * sy + oy * oy * count,
        "sum_xx": sxx + 2 * ox * sx + ox * ox * count,
        "sum_xy": sxy + oy * sx + ox * sy + oy * ox * count,
    }


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort order of ``keys`` and the start of each run of equal keys."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if keys.size else np.zeros(0, np.intp)
    return order, starts


def combine_partials(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge partials of disjoint pixel sets into one partial (same keys).

    Counts and sums add, box corners take the min / max, nucleus overlaps add
    per (cell, nucleus) pair. The result is sorted by label id.
    """
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order, starts = _runs(merged["label"])
    out: dict[str, np.ndarray] = {"label": merged["label"][order][starts]}
    for key, values in merged.items():
        if key in ("label", "pairs"):
            continue
        ordered = values[order]
        if key in _SUM_KEYS:
            reduce = np.add.reduceat
        elif key in _MIN_KEYS:
            reduce = np.minimum.reduceat
        else:
            reduce = np.maximum.reduceat
        out[key] = reduce(ordered, starts, axis=0) if starts.size else ordered[:0]
    if "pairs" in merged:
        pairs = merged["pairs"]
        codes = (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64)
        pair_order, pair_starts = _runs(codes)
        if pair_starts.size:
            first = pairs[pair_order][pair_starts]
            overlap = np.add.reduceat(pairs[pair_order, 2], pair_starts)
            out["pairs"] = np.stack([first[:, 0], first[:, 1], overlap], axis=1)
        else:
            out["pairs"] = pairs[:0]
    return out
