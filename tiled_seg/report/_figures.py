"""The report's figures: plain functions that draw arrays and tables to PNG files.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state),
so they are safe in worker threads and need no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

__all__ = [
    "composite",
    "overlay_outlines",
    "overview_figure",
    "seam_figure",
    "size_density_figure",
    "intensity_figure",
    "coexpression_figure",
    "tile_figure",
    "timing_figure",
]

#: Resolution of saved figures (dots per inch).
DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def composite(nuclear: np.ndarray, membrane: np.ndarray | None) -> np.ndarray:
    """RGB float image (0-1): nuclear in blue, membrane in green, each clipped at its 99.5th percentile."""

    def scale(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        low, high = np.percentile(x, [1.0, 99.5])
        return np.clip((x - low) / (high - low), 0, 1) if high > low else np.zeros_like(x)

    rgb = np.zeros((*nuclear.shape, 3))
    rgb[..., 2] = scale(nuclear)
    rgb[..., 0] = 0.3 * rgb[..., 2]
    if membrane is not None:
        rgb[..., 1] = scale(membrane)
    return rgb


def overlay_outlines(rgb: np.ndarray, labels: np.ndarray, colour: Sequence[float] = (1.0, 0.2, 0.2)) -> np.ndarray:
    """``rgb`` with the label boundaries painted in ``colour``."""
    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def _grid_lines(ax, tile_yx: tuple[float, float], shape: tuple[int, ...], **style) -> None:
    for y in np.arange(tile_yx[0], shape[0], tile_yx[0]):
        ax.axhline(y - 0.5, **style)
    for x in np.arange(tile_yx[1], shape[1], tile_yx[1]):
        ax.axvline(x - 0.5, **style)


def overview_figure(
    path: Path, rgb: np.ndarray, labels: np.ndarray, factor: float,
    tile_yx: tuple[int, ...] | None, title: str,
) -> Path:
    """Downsampled slide with label outlines and the tile grid (dashed yellow)."""
    height, width = labels.shape
    scale = 12.0 / max(height, width)
    fig = Figure(figsize=(max(4.0, width * scale), max(4.0, height * scale) + 0.4))
    ax = fig.subplots()
    ax.imshow(overlay_outlines(rgb, labels), interpolation="nearest")
    if tile_yx:
        _grid_lines(ax, (tile_yx[0] / factor, tile_yx[1] / factor), labels.shape,
                    color="yellow", lw=1.0, ls="--")
    ax.set_title(title)
    ax.set_axis_off()
    return _save(fig, path)


def seam_figure(
    path: Path,
    crops: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[float, float]]],
) -> Path:
    """Full-resolution crops around tile seams: ``(rgb, labels, origin_yx, seam_yx)`` each.

    Seam lines are drawn at the crop's seam position (px in the crop, NaN
    for none) in dashed yellow.
    """
    n = max(1, len(crops))
    fig = Figure(figsize=(4.2 * n, 4.6))
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (rgb, labels, origin, seam) in zip(axes, crops):
        ax.imshow(overlay_outlines(rgb, labels), interpolation="nearest")
        if np.isfinite(seam[0]):
            ax.axhline(seam[0] - 0.5, color="yellow", lw=1.2, ls="--")
        if np.isfinite(seam[1]):
            ax.axvline(seam[1] - 0.5, color="yellow", lw=1.2, ls="--")
        ax.set_title(f"crop at y={origin[0]}, x={origin[1]} px", fontsize=10)
        ax.set_axis_off()
    if not crops:
        axes[0].text(0.5, 0.5, "single tile: no seams", ha="center", va="center")
        axes[0].set_axis_off()
    return _save(fig, path)


def size_density_figure(path: Path, area_um2: np.ndarray, density_per_mm2: np.ndarray, bin_um: float) -> Path:
    """Histograms of cell area (um^2) and of cell density per spatial bin (cells/mm^2)."""
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    left.hist(area_um2, bins=60, color="tab:blue")
    left.axvline(np.median(area_um2), color="k", ls="--", lw=1, label=f"median {np.median(area_um2):.0f}")
    left.set_xlabel("cell area (um$^2$)")
    left.set_ylabel("cells")
    left.legend()
    right.hist(density_per_mm2, bins=40, color="tab:green")
    right.set_xlabel(f"cells / mm$^2$ per {bin_um:.0f} x {bin_um:.0f} um bin (tissue bins)")
    right.set_ylabel("bins")
    return _save(fig, path)


def intensity_figure(path: Path, table: pd.DataFrame, channels: Sequence[str]) -> Path:
    """Per-channel distributions of the cell means, ``log1p`` scale, one box per channel."""
    fig = Figure(figsize=(10, 0.32 * len(channels) + 1.2))
    ax = fig.subplots()
    data = [np.log1p(np.maximum(table[c].to_numpy(np.float64), 0)) for c in channels]
    ax.boxplot(data, vert=False, showfliers=False, widths=0.6)
    ax.set_yticks(np.arange(1, len(channels) + 1), list(channels), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("log(1 + cell mean counts)")
    return _save(fig, path)


def coexpression_figure(path: Path, matrix: pd.DataFrame, exclusive: Sequence[tuple[str, str]]) -> Path:
    """Fraction of cells positive for both markers; exclusive pairs boxed in red."""
    names = list(matrix.index)
    fig = Figure(figsize=(1.1 * len(names) + 2.5, 1.0 * len(names) + 1.5))
    ax = fig.subplots()
    shown = ax.imshow(matrix.to_numpy(), cmap="magma_r", vmin=0)
    fig.colorbar(shown, ax=ax, label="fraction of cells positive for both")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            value = matrix.iat[i, j]
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if value > 0.6 * matrix.to_numpy().max() else "black")
    for a, b in exclusive:
        for i, j in ((names.index(a), names.index(b)), (names.index(b), names.index(a))):
            ax.add_patch(_box(j, i))
    return _save(fig, path)


def _box(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", lw=2)


def tile_figure(path: Path, counts: np.ndarray, rates: np.ndarray, tile_yx: tuple[int, int]) -> Path:
    """Heat maps of cells per tile core and of the impossible co-expression rate per tile."""
    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2)
    panels = (
        (left, counts.astype(np.float64), f"cells per tile ({tile_yx[0]} x {tile_yx[1]} px cores)", "viridis", "{:.0f}", True),
        (right, rates, "impossible co-expression rate per tile", "magma_r", "{:.3f}", False),
    )
    for ax, values, title, cmap, fmt, light_high in panels:
        shown = ax.imshow(values, cmap=cmap, interpolation="nearest")
        fig.colorbar(shown, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("tile column")
        ax.set_ylabel("tile row")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        if values.size <= 64:
            finite = values[np.isfinite(values)]
            low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
            for (r, c), v in np.ndenumerate(values):
                level = (v - low) / (high - low) if high > low and np.isfinite(v) else 0.0
                # Dark text on the light end of the colour map.
                dark = level > 0.6 if light_high else level < 0.4
                ax.text(c, r, fmt.format(v) if np.isfinite(v) else "-", ha="center", va="center",
                        fontsize=8, color="black" if dark else "white")
    return _save(fig, path)


def timing_figure(path: Path, timings_s: dict[str, float]) -> Path:
    """Horizontal bars of the run's stage timings (s)."""
    stages = list(timings_s)
    fig = Figure(figsize=(7, 0.4 * len(stages) + 1.2))
    ax = fig.subplots()
    values = [float(timings_s[s]) for s in stages]
    ax.barh(stages, values, color="tab:orange")
    ax.invert_yaxis()
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f} s", va="center", fontsize=9)
    ax.set_xlabel("wall time (s)")
    ax.set_xlim(0, max(values + [1e-3]) * 1.25)
    return _save(fig, path)
