"""Quality checks of a segmentation: seam diagnostics, counts, sizes and density.

Impossible co-expression lives in :mod:`tiled_seg.coexpression`, spillover
compensation in :mod:`tiled_seg.redsea`, the HTML page in
:mod:`tiled_seg.report`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from tiled_seg.coexpression import _shape_of, binned_rates
from tiled_seg.errors import ConfigError
from tiled_seg.evaluate import contingency

__all__ = ["SlideQC", "cut_objects", "density_per_mm2", "slide_qc"]


@dataclass(frozen=True)
class SlideQC:
    """Counts, sizes and density of a slide's cells.

    Attributes
    ----------
    n_cells : int
    area_um2_median, area_um2_p5, area_um2_p95 : float
        Median and 5th / 95th percentiles of the cell area (um^2).
    density_per_mm2_median : float
        Median cell density over the spatial bins holding cells (cells/mm^2).
    tissue_area_mm2 : float
        Area of those bins (mm^2), a coarse tissue area.
    """

    n_cells: int
    area_um2_median: float
    area_um2_p5: float
    area_um2_p95: float
    density_per_mm2_median: float
    tissue_area_mm2: float

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of all fields."""
        return asdict(self)


def density_per_mm2(
    table: pd.DataFrame, pixel_size_um: float, bin_um: float = 100.0,
    shape_yx: tuple[int, int] | None = None,
) -> np.ndarray:
    """Cell density (cells/mm^2) of each square spatial bin that holds cells.

    Bins are ``bin_um`` on a side from the slide origin; partial bins at the
    right and bottom edges are measured by their true area.

    Parameters
    ----------
    table : DataFrame
        Cell table with ``centroid_y_px`` / ``centroid_x_px``.
    pixel_size_um : float
        Pixel size (um).
    bin_um : float
        Bin side (um).
    shape_yx : (int, int), optional
        Slide shape (px); default from the cells' boxes.

    Returns
    -------
    ndarray of float
        One value per occupied bin, in raster order.
    """
    if not pixel_size_um > 0 or not bin_um > 0:
        raise ConfigError(f"pixel_size_um and bin_um must be > 0; got {pixel_size_um}, {bin_um}.")
    counts, area_mm2 = _bins(table, pixel_size_um, bin_um, shape_yx)
    occupied = counts > 0
    return counts[occupied] / area_mm2[occupied]


def _bins(
    table: pd.DataFrame, pixel_size_um: float, bin_um: float, shape_yx: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Cells per bin and each bin's true area (mm^2, smaller at the slide's far edges)."""
    bin_px = max(1, int(round(bin_um / pixel_size_um)))
    _, counts = binned_rates(table, np.zeros(len(table), bool), bin_px, shape_yx)
    extent = _shape_of(table, shape_yx)
    height = np.diff(np.minimum(np.arange(counts.shape[0] + 1) * bin_px, extent[0]))
    width = np.diff(np.minimum(np.arange(counts.shape[1] + 1) * bin_px, extent[1]))
    return counts, np.outer(height, width) * (pixel_size_um * 1e-3) ** 2


def slide_qc(
    table: pd.DataFrame, pixel_size_um: float, bin_um: float = 100.0,
    shape_yx: tuple[int, int] | None = None,
) -> SlideQC:
    """Counts, area percentiles (um^2) and density (cells/mm^2) of a cell table."""
    area = table["area_px"].to_numpy(np.float64) * pixel_size_um**2
    if area.size == 0:
        return SlideQC(0, float("nan"), float("nan"), float("nan"), 0.0, 0.0)
    counts, area_mm2 = _bins(table, pixel_size_um, bin_um, shape_yx)
    occupied = counts > 0
    p5, median, p95 = np.percentile(area, [5, 50, 95])
    return SlideQC(
        n_cells=int(len(table)),
        area_um2_median=float(median),
        area_um2_p5=float(p5),
        area_um2_p95=float(p95),
        density_per_mm2_median=float(np.median(counts[occupied] / area_mm2[occupied])),
        tissue_area_mm2=float(area_mm2[occupied].sum()),
    )


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
