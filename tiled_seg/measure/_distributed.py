"""The dask layer: one task per block, merged by the caller.

Each block task reads its own region directly (:class:`RegionReader`) and
returns small partials; only those travel, to the caller, which merges them
(:func:`~tiled_seg.blocks.gather_reduce`). Cells that span
blocks are combined exactly (sums add, boxes take min / max), so the result
equals a whole-image computation whatever the blocks.
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd

from tiled_seg.blocks import Progress, gather_reduce, shared
from tiled_seg.errors import AxesError
from tiled_seg.io.regions import RegionReader
from tiled_seg.measure._blocks import (
    BlockMeasurements,
    MeasureJob,
    combine_measurements,
    measure_block_task,
)
from tiled_seg.measure._morphology import hull_table
from tiled_seg.tiling import Box, plan_blocks

__all__ = ["measure_blocks", "hull_features"]


def _check_shapes(job: MeasureJob) -> None:
    shape = job.labels.shape_yx
    if len(job.labels.axes) != 2:
        raise AxesError(f"labels must be (Y, X); got axes {job.labels.axes}.")
    if job.image.shape_yx != shape:
        raise AxesError(
            f"image must be (C, Y, X) with the labels' shape {shape}; got {job.image.shape_yx}. "
            "Measure labels written for this image."
        )
    if job.nuclei is not None and job.nuclei.shape_yx != shape:
        raise AxesError(f"nuclei shape {job.nuclei.shape_yx} differs from labels shape {shape}.")


def measure_blocks(
    job: MeasureJob, blocks: tuple[Box, ...] | None = None, progress: Progress | None = None
) -> BlockMeasurements:
    """Every partial of the cell table and the graphs, over the whole slide.

    Parameters
    ----------
    job : MeasureJob
        Arrays to read and graphs to build.
    blocks : tuple of Box, optional
        Blocks covering the slide once; default :func:`plan_blocks` on the
        labels' chunks.
    progress : callable, optional
        ``progress("measure", done, total)`` as blocks finish.

    Returns
    -------
    BlockMeasurements
        Merged over all blocks; cells sorted by id.
    """
    _check_shapes(job)
    if blocks is None:
        blocks = plan_blocks(job.labels.shape_yx, job.labels.chunk_yx)
    task = dask.delayed(measure_block_task, pure=True)
    job_key = shared(job)
    leaves = [task(job_key, block) for block in blocks]
    return gather_reduce(leaves, combine_measurements, "measure", progress)


def _hull_task(labels: RegionReader, box: Box, ids: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(hull_table(labels.read(box), ids))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def hull_features(
    labels: RegionReader, boxes: pd.DataFrame, blocks: tuple[Box, ...] | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Convex-hull descriptors of every cell, one task per block of whole cells.

    Each cell belongs to the block holding the top-left corner of its box; a
    task reads the union of its cells' boxes, so every cell is whole in
    exactly one task.

    Parameters
    ----------
    labels : RegionReader
        Cell labels ``(Y, X)``.
    boxes : DataFrame
        ``label``, ``min_y``, ``min_x``, ``max_y``, ``max_x`` (px, max exclusive).
    blocks : tuple of Box, optional
        Default :func:`plan_blocks` on the labels' chunks.
    progress : callable, optional
        ``progress("morphology", done, total)``.

    Returns
    -------
    DataFrame
        ``label`` and :data:`HULL_COLUMNS`, sorted by label.
    """
    if blocks is None:
        blocks = plan_blocks(labels.shape_yx, labels.chunk_yx)
    y_edges = np.unique([b.y1 for b in blocks])
    x_edges = np.unique([b.x1 for b in blocks])
    block_y = np.searchsorted(y_edges, boxes["min_y"].to_numpy(), side="right")
    block_x = np.searchsorted(x_edges, boxes["min_x"].to_numpy(), side="right")
    task = dask.delayed(_hull_task, pure=True)
    labels_key = shared(labels)
    leaves = []
    for _, group in boxes.groupby([block_y, block_x], sort=True):
        box = Box(int(group["min_y"].min()), int(group["max_y"].max()),
                  int(group["min_x"].min()), int(group["max_x"].max()))
        leaves.append(task(labels_key, box, group["label"].to_numpy()))
    if not leaves:
        return pd.DataFrame({"label": np.zeros(0, np.int64)})
    table = gather_reduce(leaves, _concat, "morphology", progress)
    return table.sort_values("label", ignore_index=True)
