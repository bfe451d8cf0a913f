"""Tile seams: where a run's tile cores meet, and whether cells there look worse.

A seam is a core edge shared by two tiles of the run's grid, taken from the
grid itself (:meth:`TileGrid.seam_lines`): cores are aligned to the chunk per
axis, so seams need not be square or at multiples of the configured tile
size. A cell is near a seam when its centroid lies within the grid's halo of
one. A seam rate well above the interior rate, or more cell box edges on
seam lines than on other lines, points at cells cut or merged by stitching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tiled_seg.tiling import TileGrid

__all__ = ["SeamCheck", "seam_distance_px", "seam_check", "seam_edge_cells"]


@dataclass(frozen=True)
class SeamCheck:
    """Impossible co-expression near tile seams versus tile interiors.

    Attributes
    ----------
    near_rate, interior_rate : float
        Rate among cells whose centroid is within ``halo_px`` of a seam, and
        among the others (NaN where a group is empty).
    n_near, n_interior : int
        Cells in each group.
    ratio : float
        ``near_rate / interior_rate`` (NaN when undefined).
    """

    near_rate: float
    interior_rate: float
    n_near: int
    n_interior: int
    ratio: float



def seam_distance_px(table: pd.DataFrame, grid: TileGrid) -> np.ndarray:
    """Distance (px) from each centroid to the nearest internal tile seam (inf without seams).

    Seams are the grid's (:meth:`TileGrid.seam_lines`).
    """
    distance = np.full(len(table), np.inf)
    for column, lines in zip(("centroid_y_px", "centroid_x_px"), grid.seam_lines()):
        if not lines:
            continue
        seams = np.asarray(lines, dtype=np.float64)
        # A seam lies between pixels seam-1 and seam, i.e. at coordinate seam - 0.5.
        coord = table[column].to_numpy()[:, None]
        distance = np.minimum(distance, np.abs(coord - (seams[None, :] - 0.5)).min(axis=1))
    return distance


def seam_check(table: pd.DataFrame, flags: np.ndarray, grid: TileGrid) -> SeamCheck:
    """Flagged-cell rate near tile seams (centroid within the grid's halo) vs interiors.

    Parameters
    ----------
    table : DataFrame
        Cell table with ``centroid_y_px`` / ``centroid_x_px``.
    flags : ndarray of bool, shape (n_cells,)
    grid : TileGrid
        The run's tile grid (its seams and halo).

    Returns
    -------
    SeamCheck
    """
    near = seam_distance_px(table, grid) <= grid.halo_px
    flags = np.asarray(flags, bool)

    def rate(mask: np.ndarray) -> float:
        return float(flags[mask].mean()) if mask.any() else float("nan")

    near_rate, interior_rate = rate(near), rate(~near)
    ratio = near_rate / interior_rate if interior_rate > 0 else float("nan")
    return SeamCheck(near_rate, interior_rate, int(near.sum()), int((~near).sum()), float(ratio))


def seam_edge_cells(table: pd.DataFrame, grid: TileGrid) -> dict[str, Any]:
    """Cell box edges lying exactly on tile seams, against every other line.

    A cell cut in two at a seam leaves two pieces whose boxes end on the seam
    line. Boxes also end on any line by chance, so the count on the seams is
    compared with the count expected there: the mean count over all other
    lines inside the slide (both axes) times the number of seams. Without
    cutting ``ratio`` is near 1 (with Poisson noise on small slides); cut
    cells raise it.

    Parameters
    ----------
    table : DataFrame
        Cell table with ``bbox_min_y_px``, ``bbox_max_y_px``, ``bbox_min_x_px``,
        ``bbox_max_x_px`` (max exclusive).
    grid : TileGrid
        The run's tile grid.

    Returns
    -------
    dict
        ``edges_on_seams`` (box edges on seam lines), ``expected`` (the
        count other lines give), ``ratio`` (NaN without seams or edges)
        and ``n_seams`` (seam lines, both axes).
    """
    on_seams, expected, n_seams = 0, 0.0, 0
    for axis, lines, extent in zip("yx", grid.seam_lines(), grid.shape_yx):
        seams = np.asarray(lines, dtype=np.int64)
        ends = np.concatenate([table[f"bbox_min_{axis}_px"], table[f"bbox_max_{axis}_px"]]).astype(np.int64)
        counts = np.bincount(ends, minlength=extent + 1)
        others = np.ones(counts.size, bool)
        others[[0, extent]] = False  # slide edges, where every box there ends
        others[seams] = False
        on_seams += int(counts[seams].sum())
        expected += float(counts[others].mean()) * seams.size if others.any() else 0.0
        n_seams += int(seams.size)
    return {
        "edges_on_seams": on_seams,
        "expected": expected,
        "ratio": on_seams / expected if expected > 0 else math.nan,
        "n_seams": n_seams,
    }
