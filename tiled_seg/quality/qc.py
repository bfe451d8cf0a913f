"""Quality checks of a segmentation: seam diagnostics, counts, sizes and density.

Impossible co-expression lives in :mod:`tiled_seg.quality.coexpression`, spillover
compensation in :mod:`tiled_seg.measure.redsea`, the HTML page in
:mod:`tiled_seg.report`. :func:`run_qc` gathers all of it for one run (the
``qc`` section of the run summary).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tiled_seg.config import QCConfig
from tiled_seg.errors import ChannelError, ConfigError
from tiled_seg.quality.coexpression import binned_rates, coexpression, resolve_marker, table_shape_yx
from tiled_seg.quality.evaluate import contingency
from tiled_seg.quality.seams import seam_check, seam_edge_cells
from tiled_seg.tiling import TileGrid

__all__ = ["SlideQC", "cut_objects", "density_per_mm2", "slide_qc", "run_qc", "headline"]


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
    extent = table_shape_yx(table, shape_yx)
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


def _present_pairs(
    table: pd.DataFrame, pairs: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The pairs whose markers are both table columns, and the others."""
    present, absent = [], []
    for a, b in pairs:
        try:
            resolve_marker(a, list(table.columns))
            resolve_marker(b, list(table.columns))
        except ChannelError:
            absent.append((a, b))
        else:
            present.append((a, b))
    return present, absent


def _json_safe(value: Any) -> Any:
    """NaN and inf to None, numpy scalars to Python, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def run_qc(
    table: pd.DataFrame,
    grid: TileGrid,
    pixel_size_um: float,
    settings: QCConfig = QCConfig(),
    compensated: bool = False,
) -> dict[str, Any]:
    """Quality control of one run from its cell table and its tile grid.

    Parameters
    ----------
    table : DataFrame
        The run's cell table (channel means, centroids and boxes in px,
        ``area_um2``).
    grid : TileGrid
        The run's grid: per-tile rates use its cores, seams its per-axis
        core size and its halo.
    pixel_size_um : float
        Slide pixel size (um/px), for sizes and densities.
    settings : QCConfig
        Exclusive marker pairs and the positivity rule.
    compensated : bool
        The table holds REDSEA columns (``<channel>_redsea``): the rate is
        computed on them too, with the thresholds of the uncompensated means.

    Returns
    -------
    dict
        JSON-ready: ``pairs`` / ``skipped_pairs``; ``coexpression`` (rate
        overall and per pair, thresholds), ``per_tile`` (cells and rate per
        tile index), ``seams`` (rate of cells within a halo of a seam vs
        interiors), ``seam_edges`` (:func:`seam_edge_cells`), ``slide``
        (:class:`SlideQC`), ``grid``; with ``compensated``, ``redsea``
        (rates before and after). Rates are None where undefined.
    """
    pairs, skipped = _present_pairs(table, settings.exclusive_pairs)
    record: dict[str, Any] = {
        "pairs": [list(p) for p in pairs],
        "skipped_pairs": [list(p) for p in skipped],
        "grid": {"tile_px_yx": list(grid.tile_px), "halo_px": grid.halo_px,
                 "shape_yx": list(grid.shape_yx)},
        "seam_edges": seam_edge_cells(table, grid),
        "slide": slide_qc(table, pixel_size_um, settings.density_bin_um, grid.shape_yx).to_dict(),
    }
    if pairs and len(table):
        result = coexpression(table, pairs, method=settings.threshold, percentile=settings.percentile)
        flags = result.impossible
        rates, counts = binned_rates(table, flags, grid.tile_px, grid.shape_yx)
        seams = seam_check(table, flags, grid)
        record["coexpression"] = {**result.to_dict(), "threshold": settings.threshold}
        record["per_tile"] = [
            {"tile": t.index, "n_cells": int(counts[t.grid_yx]), "rate": float(rates[t.grid_yx])}
            for t in grid.tiles
        ]
        record["seams"] = {**asdict(seams), "halo_px": grid.halo_px}
        if compensated:
            after = coexpression(table, pairs, thresholds=result.thresholds, suffix="_redsea")
            record["redsea"] = {
                "rate_before": result.rate,
                "rate_after": after.rate,
                "pair_rates_before": result.pair_rates,
                "pair_rates_after": {k.replace("_redsea", ""): v for k, v in after.pair_rates.items()},
            }
    return _json_safe(record)


def headline(qc: dict[str, Any]) -> list[str]:
    """The run's QC in a few lines (for ``tiled-seg info``), from :func:`run_qc`'s record.

    >>> headline({"coexpression": {"rate": 0.01, "pairs": [["CD3", "CD20"]]},
    ...           "seams": {"near_rate": 0.02, "interior_rate": 0.01}})
    ['impossible co-expression: 0.0100 (1 pairs); near seams 0.0200, interiors 0.0100']
    """

    def rate(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = []
    coexpression, seams = qc.get("coexpression"), qc.get("seams")
    if coexpression:
        line = f"impossible co-expression: {rate(coexpression['rate'])} ({len(coexpression['pairs'])} pairs)"
        if seams:
            line += f"; near seams {rate(seams['near_rate'])}, interiors {rate(seams['interior_rate'])}"
        lines.append(line)
    if "redsea" in qc:
        lines.append(f"after REDSEA: {rate(qc['redsea']['rate_after'])} (same thresholds)")
    edges = qc.get("seam_edges")
    if edges and edges.get("n_seams"):
        lines.append(f"cell box edges on seams: {edges['edges_on_seams']} "
                     f"(expected by chance {edges['expected']:.1f})")
    slide = qc.get("slide")
    if slide and slide.get("n_cells"):
        lines.append(
            f"cell area median {slide['area_um2_median']:.1f} um^2, "
            f"density median {slide['density_per_mm2_median']:.0f} cells/mm^2"
        )
    return lines
