"""Impossible co-expression: cells positive for two mutually exclusive markers.

A merged cell (two cells under one mask) or lateral spillover across a cell
boundary makes a cell look positive for markers that no real cell expresses
together, such as CD3 (T cells) and CD20 (B cells). The rate of such cells is
a ground-truth-free check of segmentation quality (DESIGN, stage 9).

Everything here works from the cell table (one row per cell: the channel
means under the channel names, ``centroid_y_px`` / ``centroid_x_px``), as
``tiled_seg.measure.measure_store`` writes it to ``tables/<name>.parquet``.

Thresholds
----------
A cell is positive for a marker when its mean is above the marker's
threshold. Given thresholds are used as they are; otherwise each is derived
from the slide's cells: ``"otsu"`` (default) is Otsu's threshold of
``log1p`` of the cell means, mapped back (``expm1``); the log makes the
skewed, count-like means closer to two modes. ``"percentile"`` is the
``percentile``-th percentile of the cell means (e.g. 90 for a marker held by
about a tenth of the cells).

Rates near tile seams against interiors are :mod:`tiled_seg.quality.seams`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu

# Defined with the run configuration, whose qc section defaults to it.
from tiled_seg.config import DEFAULT_EXCLUSIVE_PAIRS
from tiled_seg.errors import ChannelError, ConfigError

__all__ = [
    "DEFAULT_EXCLUSIVE_PAIRS",
    "CoexpressionResult",
    "resolve_marker",
    "marker_thresholds",
    "positive_cells",
    "coexpression",
    "binned_rates",
    "table_shape_yx",
]

#: Mutually exclusive marker pairs of the synthetic panel (``tiled_seg.synth``).

ThresholdMethod = Literal["otsu", "percentile"]


@dataclass(frozen=True)
class CoexpressionResult:
    """Rates of impossible co-expression on one slide.

    Attributes
    ----------
    n_cells : int
        Cells in the table.
    rate : float
        Fraction of cells positive for both markers of at least one pair.
    pair_rates : dict of str to float
        Per pair ``"A/B"``: fraction of cells positive for both.
    pair_counts : dict of str to int
        Per pair: number of such cells.
    thresholds : dict of str to float
        Threshold (mean counts) used per marker column.
    pairs : tuple of (str, str)
        The pairs as table columns.
    """

    n_cells: int
    rate: float
    pair_rates: dict[str, float]
    pair_counts: dict[str, int]
    thresholds: dict[str, float]
    pairs: tuple[tuple[str, str], ...]
    positive: pd.DataFrame = field(repr=False, compare=False)

    @property
    def impossible(self) -> np.ndarray:
        """Boolean per cell: positive for both markers of any pair."""
        flags = np.zeros(self.n_cells, dtype=bool)
        for a, b in self.pairs:
            flags |= self.positive[a].to_numpy() & self.positive[b].to_numpy()
        return flags

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (without the per-cell flags)."""
        return {
            "n_cells": self.n_cells,
            "rate": self.rate,
            "pair_rates": self.pair_rates,
            "pair_counts": self.pair_counts,
            "thresholds": self.thresholds,
            "pairs": [list(p) for p in self.pairs],
        }


def resolve_marker(name: str, columns: Sequence[str]) -> str:
    """The table column of marker ``name``.

    An exact column name wins; otherwise the one column named
    ``"<name> (<anything>)"`` (MIBItiff names such as ``"CD3 (159)"``).

    >>> resolve_marker("CD3", ["CD3 (159)", "CD20 (164)"])
    'CD3 (159)'
    """
    if name in columns:
        return name
    found = [c for c in columns if c.startswith(f"{name} (") and c.endswith(")")]
    if len(found) != 1:
        raise ChannelError(
            f"marker {name!r} is {'ambiguous' if found else 'not'} in the cell table "
            f"(columns: {', '.join(map(str, columns))}); name the exclusive pairs by "
            "their channel names."
        )
    return found[0]


def _threshold(values: np.ndarray, method: ThresholdMethod, percentile: float) -> float:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("inf")
    if method == "percentile":
        return float(np.percentile(values, percentile))
    logs = np.log1p(np.maximum(values, 0.0))
    if np.ptp(logs) == 0:
        return float(values.max())
    return float(np.expm1(threshold_otsu(logs)))


def marker_thresholds(
    table: pd.DataFrame,
    markers: Sequence[str],
    method: ThresholdMethod = "otsu",
    percentile: float = 90.0,
) -> dict[str, float]:
    """Positivity threshold of each marker column from the cells' means.

    Parameters
    ----------
    table : DataFrame
        Cell table with one column per marker (cell means, counts/px).
    markers : sequence of str
        Column names.
    method : {"otsu", "percentile"}
        Otsu of ``log1p`` of the means, or a percentile of the means.
    percentile : float
        Percentile (0-100) for ``method="percentile"``.

    Returns
    -------
    dict of str to float
    """
    if method not in ("otsu", "percentile"):
        raise ConfigError(f"threshold method {method!r} is unknown; use 'otsu' or 'percentile'.")
    if not 0 <= percentile <= 100:
        raise ConfigError(f"percentile={percentile} is outside 0..100.")
    return {m: _threshold(table[m].to_numpy(np.float64), method, percentile) for m in markers}


def positive_cells(table: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Boolean frame: cell mean above the marker's threshold, one column per marker."""
    return pd.DataFrame(
        {m: table[m].to_numpy(np.float64) > t for m, t in thresholds.items()}, index=table.index
    )


def coexpression(
    table: pd.DataFrame,
    pairs: Sequence[tuple[str, str]] = DEFAULT_EXCLUSIVE_PAIRS,
    thresholds: dict[str, float] | None = None,
    method: ThresholdMethod = "otsu",
    percentile: float = 90.0,
    suffix: str = "",
) -> CoexpressionResult:
    """Impossible co-expression rate of a slide, overall and per pair.

    Parameters
    ----------
    table : DataFrame
        Cell table (one row per cell, marker means as columns).
    pairs : sequence of (str, str)
        Mutually exclusive markers; names are resolved with
        :func:`resolve_marker`. Pairs whose markers the table lacks are
        an error.
    thresholds : dict, optional
        Threshold per marker (by the names used in ``pairs`` or by column);
        missing ones are derived with ``method``.
    method, percentile
        See :func:`marker_thresholds`.
    suffix : str
        Read the columns ``<marker><suffix>`` instead, e.g. ``"_redsea"``
        for compensated means.

    Returns
    -------
    CoexpressionResult
    """
    if not pairs:
        raise ConfigError("no exclusive marker pairs given; name at least one pair, e.g. CD3/CD20.")
    base = [c[: -len(suffix)] if suffix and c.endswith(suffix) else None for c in table.columns]
    names = [b for b in base if b is not None] if suffix else list(table.columns)
    resolved = tuple(
        (resolve_marker(a, names) + suffix, resolve_marker(b, names) + suffix) for a, b in pairs
    )
    markers = list(dict.fromkeys(m for p in resolved for m in p))
    given: dict[str, float] = {}
    for key, value in (thresholds or {}).items():
        column = key if key in markers else resolve_marker(key, names) + suffix
        given[column] = float(value)
    derived = marker_thresholds(table, [m for m in markers if m not in given], method, percentile)
    chosen = {m: given.get(m, derived.get(m, np.inf)) for m in markers}
    positive = positive_cells(table, chosen)
    n = len(table)
    counts = {
        f"{a}/{b}": int((positive[a] & positive[b]).sum()) for a, b in resolved
    }
    impossible = np.zeros(n, dtype=bool)
    for a, b in resolved:
        impossible |= positive[a].to_numpy() & positive[b].to_numpy()
    return CoexpressionResult(
        n_cells=n,
        rate=float(impossible.mean()) if n else 0.0,
        pair_rates={k: v / n if n else 0.0 for k, v in counts.items()},
        pair_counts=counts,
        thresholds=chosen,
        pairs=resolved,
        positive=positive,
    )


def table_shape_yx(table: pd.DataFrame, shape_yx: tuple[int, int] | None = None) -> tuple[int, int]:
    """``shape_yx`` where given, else the extent (px) the cells' boxes or centroids span."""
    if shape_yx is not None:
        return int(shape_yx[0]), int(shape_yx[1])
    if "bbox_max_y_px" in table:
        return int(table["bbox_max_y_px"].max()), int(table["bbox_max_x_px"].max())
    return int(np.ceil(table["centroid_y_px"].max())) + 1, int(np.ceil(table["centroid_x_px"].max())) + 1


def _per_axis(size_px: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(y, x)`` sizes from one size or a pair, validated as positive px."""
    sizes = (size_px, size_px) if isinstance(size_px, (int, np.integer)) else tuple(size_px)
    if len(sizes) != 2 or min(sizes) < 1:
        raise ConfigError(f"{name} must be a positive number of pixels, or one per axis (y, x); got {size_px}.")
    return int(sizes[0]), int(sizes[1])


def binned_rates(
    table: pd.DataFrame,
    flags: np.ndarray,
    bin_px: int | Sequence[int],
    shape_yx: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rate of flagged cells per rectangular bin of the slide.

    With ``bin_px`` equal to the run's ``TileGrid.tile_px`` (per axis) the
    bins are the tile cores; for a bin size in um, pass
    ``round(bin_um / pixel_size_um)``.

    Parameters
    ----------
    table : DataFrame
        Cell table with ``centroid_y_px`` / ``centroid_x_px``.
    flags : ndarray of bool, shape (n_cells,)
        E.g. :attr:`CoexpressionResult.impossible`.
    bin_px : int or (int, int)
        Bin side (px), or ``(y, x)`` sides.
    shape_yx : (int, int), optional
        Slide shape (px); default from the cells' boxes.

    Returns
    -------
    rates : ndarray of float, shape (rows, cols)
        Flagged fraction per bin (NaN where a bin has no cell).
    counts : ndarray of int, shape (rows, cols)
        Cells per bin.
    """
    bin_y, bin_x = _per_axis(bin_px, "bin_px")
    height, width = table_shape_yx(table, shape_yx)
    rows, cols = -(-height // bin_y), -(-width // bin_x)
    by = np.clip((table["centroid_y_px"].to_numpy() // bin_y).astype(np.int64), 0, rows - 1)
    bx = np.clip((table["centroid_x_px"].to_numpy() // bin_x).astype(np.int64), 0, cols - 1)
    index = by * cols + bx
    counts = np.bincount(index, minlength=rows * cols).reshape(rows, cols)
    flagged = np.bincount(index, weights=np.asarray(flags, np.float64), minlength=rows * cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(counts > 0, flagged.reshape(rows, cols) / counts, np.nan)
    return rates, counts
