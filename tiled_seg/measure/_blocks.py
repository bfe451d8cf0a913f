"""Everything measured in one block, in one read: the per-block kernel and its task.

:func:`measure_block` takes the labels of one block (with a small halo), its
image (all channels) and nuclei, and returns every partial the cell table
and the touching / border graphs need. :func:`measure_block_task` is what a
worker runs: it reads those arrays with one direct region read each and
calls the kernel. :func:`combine_measurements` merges the results of any set
of disjoint blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tiled_seg.io.regions import RegionReader
from tiled_seg.measure._intensity import block_partials, combine_partials
from tiled_seg.measure._morphology import perimeter_partials
from tiled_seg.measure._neighbours import border_pairs, closest_per_pair, touching_pairs, unique_pairs
from tiled_seg.tiling import Box

__all__ = [
    "BlockMeasurements", "MeasureJob", "combine_measurements", "measure_block", "measure_block_task",
    "warm_block_task",
]

#: Halo (px) the perimeter needs: the border status of a pixel's neighbours.
PERIMETER_HALO_PX = 2


@dataclass(frozen=True)
class BlockMeasurements:
    """Partial results of one block, or of several merged.

    Attributes
    ----------
    cells : dict of ndarray
        Per-label partials of :func:`~tiled_seg.measure._intensity.block_partials`
        plus ``perimeter`` (px).
    touching : ndarray, shape (m, 2)
        Touching pairs ``a < b``, unique, sorted.
    border : ndarray, shape (k, 2)
        Pairs within the border distance, unique, sorted; empty when not asked.
    border_px : ndarray, shape (k,)
        Their border distance (px).
    """

    cells: dict[str, np.ndarray]
    touching: np.ndarray
    border: np.ndarray
    border_px: np.ndarray


@dataclass(frozen=True)
class MeasureJob:
    """What every measurement block task reads, and which graphs it builds.

    Attributes
    ----------
    labels, image, nuclei : RegionReader
        Cell labels ``(Y, X)``, the image ``(C, Y, X)`` and optional nucleus labels.
    connectivity : int
        Pixel contact rule of the touching graph (1 or 2).
    border_dmax_px : float or None
        Largest border distance (px) of the border graph; None for none.
    """

    labels: RegionReader
    image: RegionReader
    nuclei: RegionReader | None = None
    connectivity: int = 1
    border_dmax_px: float | None = None

    @property
    def halo_px(self) -> int:
        """Labels read around each block (px)."""
        border = math.ceil(self.border_dmax_px) + 1 if self.border_dmax_px else 0
        return max(PERIMETER_HALO_PX, border)


def measure_block(
    labels: np.ndarray,
    core: Box,
    origin: tuple[int, int],
    image: np.ndarray,
    nuclei: np.ndarray | None = None,
    *,
    connectivity: int = 1,
    border_dmax_px: float | None = None,
) -> BlockMeasurements:
    """Partials of the pixels in ``core``.

    Parameters
    ----------
    labels : ndarray, shape (Y, X), integer
        Cell labels of ``core`` and of a halo around it (at least 2 px, and
        ``ceil(border_dmax_px) + 1`` px for the border graph) where the slide
        continues.
    core : Box
        The block's own pixels, in ``labels``' coordinates.
    origin : (int, int)
        Global position (px) of ``labels[0, 0]``.
    image : ndarray, shape (C, core height, core width)
        The channels over ``core``.
    nuclei : ndarray, shape (core height, core width), optional
        Nucleus labels over ``core``.
    connectivity : {1, 2}
        Touching rule.
    border_dmax_px : float, optional
        Largest border distance (px) of the border graph.
    """
    core_labels = labels[core.slices]
    cells = block_partials(core_labels, image, (origin[0] + core.y0, origin[1] + core.x0), nuclei)
    ids, perimeter = perimeter_partials(labels, core)
    cells["perimeter"] = np.zeros(cells["label"].size)
    cells["perimeter"][np.searchsorted(cells["label"], ids)] = perimeter
    shape = (labels.shape[0], labels.shape[1])
    touching = touching_pairs(labels[core.grow(1, shape).slices], connectivity)
    border, border_px = np.zeros((0, 2), np.int64), np.zeros(0)
    if border_dmax_px:
        window = core.grow(math.ceil(border_dmax_px) + 1, shape)
        inner = core.relative_to(window)
        border, border_px = border_pairs(
            labels[window.slices], border_dmax_px, (inner.y0, inner.x0, inner.y1, inner.x1)
        )
    return BlockMeasurements(cells, touching, border, border_px)


def measure_block_task(job: MeasureJob, block: Box) -> BlockMeasurements:
    """Read one block (labels with the job's halo, image, nuclei) and measure it."""
    window = block.grow(job.halo_px, job.labels.shape_yx)
    return measure_block(
        job.labels.read(window),
        block.relative_to(window),
        (window.y0, window.x0),
        job.image.read(block),
        None if job.nuclei is None else job.nuclei.read(block),
        connectivity=job.connectivity,
        border_dmax_px=job.border_dmax_px,
    )


def warm_block_task(image_dtype: str, labels_dtype: str = "uint32") -> None:
    """Run :func:`measure_block` once on a tiny block of these dtypes.

    A worker's first block task otherwise pays for importing the measurement
    code and loading numba's compiled kernels, which are specialised by
    dtype (0.6-1 s per worker on this project's machine); a run calls this
    on every worker while it stitches, so the measure stage starts warm.
    """
    labels = np.zeros((8, 8), labels_dtype)
    labels[2:5, 2:5], labels[5:7, 2:6] = 1, 2
    core = Box(2, 6, 2, 6)
    measure_block(labels, core, (0, 0), np.ones((1, 4, 4), image_dtype), labels[core.slices].copy())


def combine_measurements(parts: list[BlockMeasurements]) -> BlockMeasurements:
    """Merge the measurements of disjoint blocks (any grouping gives the same result)."""
    border, border_px = closest_per_pair(
        np.concatenate([p.border for p in parts]), np.concatenate([p.border_px for p in parts])
    )
    return BlockMeasurements(
        cells=combine_partials([p.cells for p in parts]),
        touching=unique_pairs(np.concatenate([p.touching for p in parts])),
        border=border,
        border_px=border_px,
    )
