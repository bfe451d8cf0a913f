"""Compiled single-pass pixel kernels of the measurement block task.

Each kernel walks the pixels of one block once, in raster order, and
accumulates per-label partials into arrays the caller allocated; the numpy
wrappers in ``_intensity``, ``_morphology`` and ``_neighbours`` choose ids,
dtypes and shapes. A numpy formulation of the same sums needs a sort or one
pass per channel and quantity, which made the block task several times the
cost of reading its block.

Compiled code is cached next to this file (numba's ``cache=True``) so worker
processes do not recompile; where that folder cannot be written numba's
user-wide cache is used, and where no cache can be written each process
compiles once.
"""

from __future__ import annotations

from typing import Any, Callable

import numba
import numpy as np

__all__ = ["label_range", "dense_index", "cell_sums", "perimeter_weights", "contacts"]


def _compiled(function: Callable[..., Any]) -> Any:
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:
        # No writable cache location (a read-only install and home).
        return numba.njit(cache=False, nogil=True)(function)


@_compiled
def label_range(labels: np.ndarray) -> tuple[int, int, int]:
    """Smallest and largest non-zero label and the number of labelled pixels (0, -1, 0 when none)."""
    low, high, count = np.int64(0), np.int64(-1), 0
    for value in labels.ravel():
        if value > 0:
            v = np.int64(value)
            if count == 0 or v < low:
                low = v
            if v > high:
                high = v
            count += 1
    return int(low), int(high), count


@_compiled
def dense_index(labels: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-zero labels in ``[low, high]`` and each pixel's row among them (-1: background)."""
    flat = labels.ravel()
    present = np.zeros(high - low + 1, np.int64)
    for value in flat:
        if value > 0:
            present[np.int64(value) - low] = 1
    row = np.full(high - low + 1, -1, np.int64)
    n = 0
    for k in range(present.size):
        if present[k]:
            row[k] = n
            n += 1
    ids = np.empty(n, np.int64)
    index = np.full(flat.size, -1, np.int64)
    for k in range(present.size):
        if row[k] >= 0:
            ids[row[k]] = k + low
    for p in range(flat.size):
        if flat[p] > 0:
            index[p] = row[np.int64(flat[p]) - low]
    return ids, index


@_compiled
def cell_sums(
    index: np.ndarray, width: int, image: np.ndarray, in_nucleus: np.ndarray,
    y0: int, x0: int,
    count: np.ndarray, sums: np.ndarray, coords: np.ndarray, box: np.ndarray,
    nuc_count: np.ndarray, nuc_sums: np.ndarray,
) -> None:
    """Add each labelled pixel of a block to its row's partials (in place).

    ``index`` holds each pixel's row (-1: background); ``image`` is
    ``(C, Y * X)``; ``in_nucleus`` is empty or one flag per pixel. ``coords``
    rows are sums of global y, x, y*y, x*x, x*y; ``box`` rows are min y,
    min x, max y, max x (inclusive, global).
    """
    n_channels = image.shape[0]
    with_nuclei = in_nucleus.size > 0
    for p in range(index.size):
        i = index[p]
        if i < 0:
            continue
        y = y0 + p // width
        x = x0 + p % width
        count[i] += 1
        coords[i, 0] += y
        coords[i, 1] += x
        coords[i, 2] += y * y
        coords[i, 3] += x * x
        coords[i, 4] += x * y
        if y < box[i, 0]:
            box[i, 0] = y
        if x < box[i, 1]:
            box[i, 1] = x
        if y > box[i, 2]:
            box[i, 2] = y
        if x > box[i, 3]:
            box[i, 3] = x
        if with_nuclei and in_nucleus[p]:
            nuc_count[i] += 1
            for c in range(n_channels):
                nuc_sums[i, c] += image[c, p]
        for c in range(n_channels):
            sums[i, c] += image[c, p]


@_compiled
def perimeter_weights(
    padded: np.ndarray, y0: int, y1: int, x0: int, x1: int, weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """skimage's perimeter weight of every border pixel of a core box.

    ``padded`` is the labels padded by 2 px of zeros (so outside the array
    counts as another id and no neighbour lookup leaves it); the core box
    ``[y0, y1) x [x0, x1)`` is in unpadded coordinates. A border pixel is a
    labelled pixel with a 4-neighbour of another id; its weight is
    ``weights[code]``, code 1 plus 2 per same-label border edge neighbour and
    10 per such corner neighbour. Returns the core's border mask and weights.
    """
    height, width = padded.shape
    border = np.zeros((height, width), np.bool_)
    for y in range(1, height - 1):
        for x in range(1, width - 1):
            v = padded[y, x]
            border[y, x] = v != 0 and (
                padded[y - 1, x] != v or padded[y + 1, x] != v
                or padded[y, x - 1] != v or padded[y, x + 1] != v
            )
    own_border = np.zeros((y1 - y0, x1 - x0), np.bool_)
    weight = np.zeros((y1 - y0, x1 - x0), np.float64)
    for y in range(y0 + 2, y1 + 2):
        for x in range(x0 + 2, x1 + 2):
            if not border[y, x]:
                continue
            v = padded[y, x]
            code = 1
            for ny, nx, step in (
                (y - 1, x, 2), (y + 1, x, 2), (y, x - 1, 2), (y, x + 1, 2),
                (y - 1, x - 1, 10), (y - 1, x + 1, 10), (y + 1, x - 1, 10), (y + 1, x + 1, 10),
            ):
                if border[ny, nx] and padded[ny, nx] == v:
                    code += step
            own_border[y - y0 - 2, x - x0 - 2] = True
            weight[y - y0 - 2, x - x0 - 2] = weights[code]
    return own_border, weight


@_compiled
def contacts(labels: np.ndarray, connectivity: int, pairs: np.ndarray, write: bool) -> int:
    """Adjacent pixel pairs of two different non-zero labels: their number, and with
    ``write`` the pairs themselves as ``(min, max)`` rows of ``pairs``.

    Each pixel is paired with its right and lower neighbours (and, with
    ``connectivity`` 2, its two lower diagonal ones), so each contact is seen once.
    """
    height, width = labels.shape
    found = 0
    for y in range(height):
        for x in range(width):
            a = np.int64(labels[y, x])
            if a == 0:
                continue
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                if dy == 1 and dx != 0 and connectivity != 2:
                    continue
                ny, nx = y + dy, x + dx
                if ny >= height or nx < 0 or nx >= width:
                    continue
                b = np.int64(labels[ny, nx])
                if b != 0 and b != a:
                    if write:
                        pairs[found, 0] = min(a, b)
                        pairs[found, 1] = max(a, b)
                    found += 1
    return found
