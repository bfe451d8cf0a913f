"""The dask layer: map the measurement kernels over chunks and reduce.

Every task reads its own chunks (from zarr when the arrays come from a
store); only the small per-label partial tables cross between tasks, merged
in a fixed tree so the result does not depend on the order tasks finish.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd

from tiled_seg.errors import AxesError, ConfigError
from tiled_seg.measure._intensity import block_partials, combine_partials
from tiled_seg.measure._morphology import morphology_table
from tiled_seg.measure._neighbours import (
    border_pairs,
    closest_per_pair,
    touching_pairs,
    unique_pairs,
)

__all__ = ["aggregate_cells", "morphology_dask", "touching_dask", "border_edges_dask", "align_chunks"]

#: Partials merged per reduction task.
FAN_IN = 8


def align_chunks(
    labels: da.Array, image: da.Array, nuclei: da.Array | None = None
) -> tuple[da.Array, da.Array, da.Array | None]:
    """Give ``labels`` (and ``nuclei``) the y/x chunks of ``image``."""
    if labels.ndim != 2:
        raise AxesError(f"labels must be (Y, X); got shape {labels.shape}.")
    if image.ndim != 3 or image.shape[1:] != labels.shape:
        raise AxesError(
            f"image must be (C, Y, X) with the labels' shape {labels.shape}; got "
            f"{image.shape}. Measure labels written for this image."
        )
    if nuclei is not None and nuclei.shape != labels.shape:
        raise AxesError(f"nuclei shape {nuclei.shape} differs from labels shape {labels.shape}.")
    chunks = image.chunks[1:]
    labels = labels.rechunk(chunks)
    if nuclei is not None:
        nuclei = nuclei.rechunk(chunks)
    return labels, image, nuclei


def _partials_task(
    labels: np.ndarray,
    image: np.ndarray,
    y0: np.ndarray,
    x0: np.ndarray,
    nuclei: np.ndarray | None = None,
) -> np.ndarray:
    # blockwise wants an array back: box the partials in a 1 x 1 object array.
    boxed = np.empty((1, 1), dtype=object)
    boxed[0, 0] = block_partials(labels, image, (int(y0[0]), int(x0[0])), nuclei)
    return boxed


def _combine_boxed(items: list[Any]) -> dict[str, np.ndarray]:
    return combine_partials([i[0, 0] if isinstance(i, np.ndarray) else i for i in items])


def aggregate_cells(
    labels: da.Array, image: da.Array, nuclei: da.Array | None = None
) -> dict[str, np.ndarray]:
    """Per-cell sums over the whole slide, reduced over chunks.

    One task per y/x block reads the labels and every channel of that block
    (a blockwise layer that fuses with the zarr reads, so block data stays in
    the task) and returns its partials; partials merge in a tree of fan-in
    ``FAN_IN``.

    Parameters
    ----------
    labels : dask array, shape (Y, X), integer
    image : dask array, shape (C, Y, X)
    nuclei : dask array, shape (Y, X), optional

    Returns
    -------
    dict of ndarray
        The merged partials of :func:`block_partials`, one row per cell id
        present, sorted by id.
    """
    labels, image, nuclei = align_chunks(labels, image, nuclei)
    starts = [np.r_[0, np.cumsum(c)[:-1]].astype(np.int64) for c in labels.chunks]
    args: list[Any] = [
        labels, "yx", image, "cyx",
        da.from_array(starts[0], chunks=1), "y",
        da.from_array(starts[1], chunks=1), "x",
    ]
    if nuclei is not None:
        args += [nuclei, "yx"]
    boxed = da.blockwise(
        _partials_task, "yx", *args,
        concatenate=True, align_arrays=False, dtype=object, meta=np.empty((0, 0), dtype=object),
    )
    parts = list(boxed.to_delayed().ravel())
    combine = dask.delayed(_combine_boxed, pure=True)
    # At least one merge, which also unboxes the partials of a single block.
    parts = [combine(parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
    while len(parts) > 1:
        parts = [combine(parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
    (merged,) = dask.compute(parts[0])
    return merged


def morphology_dask(labels: da.Array, boxes: pd.DataFrame) -> pd.DataFrame:
    """Shape descriptors of every cell, one task per group of whole cells.

    Cells are grouped by the chunk that holds the top-left corner of their
    bounding box; a task reads the union of its cells' boxes, so every cell is
    whole in exactly one task.

    Parameters
    ----------
    labels : dask array, shape (Y, X), integer
    boxes : DataFrame
        Columns ``label``, ``min_y``, ``min_x``, ``max_y``, ``max_x`` (px,
        max exclusive), e.g. from :func:`aggregate_cells`.

    Returns
    -------
    DataFrame
        ``label`` and :data:`MORPHOLOGY_COLUMNS`, sorted by label.
    """
    edges = [np.cumsum(c) for c in labels.chunks]
    block_y = np.searchsorted(edges[0], boxes["min_y"].to_numpy(), side="right")
    block_x = np.searchsorted(edges[1], boxes["min_x"].to_numpy(), side="right")
    kernel = dask.delayed(morphology_table, pure=True)
    tasks = []
    for _, group in boxes.groupby([block_y, block_x], sort=True):
        y0, x0 = int(group["min_y"].min()), int(group["min_x"].min())
        y1, x1 = int(group["max_y"].max()), int(group["max_x"].max())
        tasks.append(kernel(labels[y0:y1, x0:x1], group["label"].to_numpy()))
    results = dask.compute(*tasks)
    frames = [pd.DataFrame(r) for r in results]
    if not frames:
        return pd.DataFrame({"label": np.zeros(0, np.int64)})
    return pd.concat(frames, ignore_index=True).sort_values("label", ignore_index=True)


def touching_dask(labels: da.Array, connectivity: int = 1) -> np.ndarray:
    """Touching cell pairs ``(a, b)``, ``a < b``, over the whole slide.

    Each block is read with a 1-px halo on every side, so every pair of
    adjacent pixels lies whole inside at least one block.
    """
    padded = da.overlap.overlap(labels, depth=1, boundary="none")
    kernel = dask.delayed(touching_pairs, pure=True)
    merge = dask.delayed(_merge_pairs, pure=True)
    parts = [kernel(block, connectivity) for block in padded.to_delayed().ravel()]
    while len(parts) > 1:
        parts = [merge(parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
    (pairs,) = dask.compute(parts[0])
    return pairs


def _merge_pairs(parts: list[np.ndarray]) -> np.ndarray:
    return unique_pairs(np.concatenate(parts))


def border_edges_dask(labels: da.Array, dmax_px: float) -> pd.DataFrame:
    """Cell pairs whose borders are at most ``dmax_px`` apart, over the whole slide.

    Each task reads one chunk with a halo of ``ceil(dmax_px) + 1`` px (by
    slicing, so the halo may be wider than the chunks) and keeps the pairs
    with a pixel in its chunk (:func:`border_pairs`); merging keeps each
    pair's smallest distance, so the result equals :func:`border_pairs` on
    the whole array.

    Parameters
    ----------
    labels : dask array, shape (Y, X), integer
    dmax_px : float
        Largest border distance (px): the smallest distance between pixel
        centres of the two cells; touching cells are 1 px apart.

    Returns
    -------
    DataFrame
        ``cell_a < cell_b`` (sorted) and ``distance_px``.
    """
    if labels.ndim != 2:
        raise AxesError(f"labels must be (Y, X); got shape {labels.shape}.")
    if not dmax_px > 0:
        raise ConfigError(f"border distance must be > 0 px; got {dmax_px}.")
    halo = math.ceil(dmax_px) + 1
    height, width = labels.shape
    kernel = dask.delayed(border_pairs, pure=True)
    merge = dask.delayed(_merge_closest, pure=True)
    edges = [np.r_[0, np.cumsum(c)] for c in labels.chunks]
    parts = []
    for y0, y1 in zip(edges[0][:-1], edges[0][1:]):
        for x0, x1 in zip(edges[1][:-1], edges[1][1:]):
            top, left = max(int(y0) - halo, 0), max(int(x0) - halo, 0)
            block = labels[top : min(int(y1) + halo, height), left : min(int(x1) + halo, width)]
            core = (int(y0) - top, int(x0) - left, int(y1) - top, int(x1) - left)
            parts.append(kernel(block, dmax_px, core))
    while len(parts) > 1:
        parts = [merge(parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
    ((pairs, distances),) = dask.compute(parts[0])
    return pd.DataFrame({"cell_a": pairs[:, 0], "cell_b": pairs[:, 1], "distance_px": distances})


def _merge_closest(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return closest_per_pair(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
