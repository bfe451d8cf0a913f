"""Gather what the report shows from a store and write the page with its figures."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import zarr

from tiled_seg.errors import ChannelError, InputNotFoundError, OutputExistsError
from tiled_seg.io.ngff import Slide, open_slide, read_labels
from tiled_seg.io.tables import DEFAULT_TABLE, read_parquet
from tiled_seg.measure.redsea import REDSEA_SUFFIX
from tiled_seg.pipeline.state import RunState
from tiled_seg.quality.coexpression import (
    DEFAULT_EXCLUSIVE_PAIRS,
    CoexpressionResult,
    binned_rates,
    coexpression,
    resolve_marker,
)
from tiled_seg.quality.qc import density_per_mm2, slide_qc
from tiled_seg.quality.seams import SeamCheck, seam_check
from tiled_seg.report import _figures as figs
from tiled_seg.tiling import TileGrid

__all__ = ["ReportResult", "write_report"]

#: Side (um) of the spatial bins of the density histogram.
DENSITY_BIN_UM = 100.0


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes
    ----------
    html : Path
        The page.
    figures : dict of str to Path
        PNG files beside it, by figure name.
    coexpression : CoexpressionResult or None
        Impossible co-expression of the exclusive pairs (None when the
        table has none of their markers).
    seams : SeamCheck or None
        Seam versus interior rates (None without a tile grid or pairs).
    """

    html: Path
    figures: dict[str, Path]
    coexpression: CoexpressionResult | None = field(repr=False)
    seams: SeamCheck | None


def _label_levels(store: str, name: str) -> int:
    group = zarr.open_group(f"{store}/labels/{name}", mode="r")
    return sum(1 for key in group.array_keys() if key.isdigit())


def _inputs(slide: Slide, config: dict[str, Any]) -> tuple[int, int | None]:
    panel = config.get("panel", {})
    present = [n for n in panel.get("nuclear", []) if n in slide.channel_names]
    nuclear = slide.channel_index(present[0]) if present else 0
    membrane = [n for n in panel.get("membrane", []) if n in slide.channel_names]
    return nuclear, slide.channel_index(membrane[0]) if membrane else None


def _overview(
    slide: Slide, store: str, labels: str, channels: tuple[int, int | None], max_side_px: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """RGB and labels at the pyramid level nearest below ``max_side_px``, and its factor."""
    level = next(
        (i for i, lv in enumerate(slide.levels) if max(lv.shape[1:]) <= max_side_px),
        len(slide.levels) - 1,
    )
    image = slide.levels[level]
    factor = float(slide.level_factors[level]) if level < len(slide.level_factors) else 2.0**level
    # Strided subsampling of an oversized top level, no invented values.
    stride = max(1, math.ceil(max(image.shape[1:]) / max_side_px))
    nuc, mem = channels
    picked = [nuc] + ([mem] if mem is not None else [])
    planes = np.asarray(image[picked, ::stride, ::stride].compute(), np.float64)
    rgb = figs.composite(planes[0], planes[1] if mem is not None else None)
    label_level = min(int(round(math.log2(factor))), _label_levels(store, labels) - 1)
    step = max(1, int(round(factor * stride / 2**label_level)))
    lab = np.asarray(read_labels(store, labels, label_level)[::step, ::step].compute())
    out = np.zeros(rgb.shape[:2], lab.dtype)
    h, w = min(out.shape[0], lab.shape[0]), min(out.shape[1], lab.shape[1])
    out[:h, :w] = lab[:h, :w]
    return rgb, out, factor * stride


def _seam_points(grid: TileGrid, n: int, centroids: np.ndarray, half: int) -> list[tuple[int, int]]:
    """The ``n`` seam points (tile corners, else seam midpoints) with most cells around them."""
    shape = grid.shape_yx
    ys, xs = grid.seam_lines()
    if ys and xs:
        points = [(y, x) for y in ys for x in xs]  # tile corners: four tiles meet
    else:
        points = [(y, shape[1] // 2) for y in ys] + [(shape[0] // 2, x) for x in xs]
    if not points:
        return []
    where = np.array(points, np.float64)
    near = (np.abs(centroids[None, :, :] - where[:, None, :]) < half).all(axis=2).sum(axis=1)
    order = np.argsort(-near, kind="stable")[:n]
    return [points[i] for i in sorted(order)]


def _seam_crops(
    slide: Slide, store: str, labels: str, channels: tuple[int, int | None],
    grid: TileGrid, n: int, centroids: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[float, float]]]:
    height, width = slide.shape_yx
    half = max(grid.halo_px, 48)
    seams_y, seams_x = (set(lines) for lines in grid.seam_lines())
    full = read_labels(store, labels, 0)
    nuc, mem = channels
    picked = [nuc] + ([mem] if mem is not None else [])
    crops = []
    for y, x in _seam_points(grid, n, centroids, half):
        y0, x0 = max(0, y - half), max(0, x - half)
        y1, x1 = min(height, y + half), min(width, x + half)
        planes = np.asarray(slide.data[picked, y0:y1, x0:x1].compute(), np.float64)
        rgb = figs.composite(planes[0], planes[1] if mem is not None else None)
        seam_y = float(y - y0) if y in seams_y else math.nan
        seam_x = float(x - x0) if x in seams_x else math.nan
        crops.append((rgb, np.asarray(full[y0:y1, x0:x1].compute()), (y0, x0), (seam_y, seam_x)))
    return crops


def _pairs_in(
    table: pd.DataFrame, pairs: Sequence[tuple[str, str]], strict: bool
) -> list[tuple[str, str]]:
    """The pairs whose markers the table has; with ``strict`` a missing one is an error."""
    usable = []
    columns = list(table.columns)
    for a, b in pairs:
        try:
            usable.append((resolve_marker(a, columns), resolve_marker(b, columns)))
        except ChannelError as error:
            if strict:
                raise ChannelError(f"marker pair {a}/{b} (--pair): {error}") from None
    return usable


def _pair_matrix(result: CoexpressionResult) -> pd.DataFrame:
    markers = list(dict.fromkeys(m for p in result.pairs for m in p))
    positive = result.positive[markers].to_numpy(np.float64)
    both = positive.T @ positive / max(1, len(positive))
    return pd.DataFrame(both, index=markers, columns=markers)


def _rows(items: Sequence[tuple[str, Any]]) -> str:
    return "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in items
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; border: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; font-weight: 600; }
img { max-width: 100%; border: 1px solid #ddd; } .note { color: #666; font-size: 0.92em; }
"""


def write_report(
    store: str | Path,
    out: str | Path | None = None,
    *,
    table: str = DEFAULT_TABLE,
    labels: str = "cells",
    pairs: Sequence[tuple[str, str]] | None = None,
    require_pairs: bool = True,
    thresholds: dict[str, float] | None = None,
    max_side_px: int = 1200,
    n_seam_crops: int = 4,
    overwrite: bool = False,
) -> ReportResult:
    """Write an HTML quality-control page of a segmented store, with PNG figures beside it.

    Shows the slide overview with label outlines (a pyramid level with at
    most ``max_side_px`` px a side) and the tile grid, full-resolution crops
    at tile seams, cell size and density histograms, per-channel intensity
    distributions, the co-expression matrix of the exclusive marker pairs
    (rates overall, per tile and near seams vs interiors; also after REDSEA
    where the table has ``<channel>_redsea`` columns), cells per tile and
    the run's stage timings.

    Parameters
    ----------
    store : str or Path
        Store with ``labels/<labels>`` and ``tables/<table>.parquet``; the
        image is read from it, or from the store named in its run
        attributes (``tiled_seg.source``) when the run wrote elsewhere.
    out : str or Path, optional
        The HTML file; default ``<store>.report/index.html``.
    table, labels : str
        Cell table and label image names.
    pairs : sequence of (str, str), optional
        Mutually exclusive markers, each of which must be in the table
        (a :class:`~tiled_seg.errors.ChannelError` otherwise); default the
        synthetic panel's pairs, those the table lacks skipped.
    require_pairs : bool
        With False, given pairs the table lacks are skipped too (a run's
        configured ``qc.exclusive_pairs``).
    thresholds : dict, optional
        Marker thresholds; default derived per slide (see
        :mod:`tiled_seg.quality.coexpression`).
    max_side_px : int
        Largest side of the overview (px).
    n_seam_crops : int
        Seam crops shown.
    overwrite : bool
        Replace an existing page.

    Returns
    -------
    ReportResult
    """
    store = str(store).rstrip("/")
    target = Path(out) if out is not None else Path(f"{store}.report") / "index.html"
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass --overwrite to replace it.")
    cells = read_parquet(Path(store) / "tables" / f"{table}.parquet")
    usable = _pairs_in(cells, DEFAULT_EXCLUSIVE_PAIRS if pairs is None else pairs,
                       strict=pairs is not None and require_pairs)
    state = RunState.read(store) or RunState()
    summary, config, grid = dict(state.summary or {}), dict(state.config or {}), state.grid
    slide = open_slide(state.source or store, config.get("pixel_size_um"))
    pixel_um = slide.pixel_size_um or float(
        (cells["centroid_y_um"] / cells["centroid_y_px"].where(cells["centroid_y_px"] > 0)).median()
    )
    if labels not in [*zarr.open_group(f"{store}/labels", mode="r").group_keys()]:
        raise InputNotFoundError(f"{store} has no labels/{labels}; run `tiled-seg run` first.")
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tile_yx = None if grid is None else grid.tile_px
    channels = _inputs(slide, config)
    fig_paths: dict[str, Path] = {}
    captions: dict[str, str] = {}

    rgb, lab, factor = _overview(slide, store, labels, channels, max_side_px)
    fig_paths["overview"] = figs.overview_figure(
        folder / "overview.png", rgb, lab, factor, tile_yx,
        f"{Path(store).name}: {len(cells)} cells (1/{factor:g} scale)",
    )
    captions["overview"] = (
        f"Slide overview at 1/{factor:g} resolution: nuclear channel blue, membrane green, "
        "cell outlines red, tile cores dashed yellow."
    )
    if grid is not None:
        centroids = cells[["centroid_y_px", "centroid_x_px"]].to_numpy(np.float64)
        crops = _seam_crops(slide, store, labels, channels, grid, n_seam_crops, centroids)
        fig_paths["seams"] = figs.seam_figure(folder / "seams.png", crops)
        captions["seams"] = (
            "Full-resolution crops where tile cores meet (dashed yellow), the seam points "
            "with most cells; a cell cut by a seam shows a straight outline along the line."
        )
    density = density_per_mm2(cells, pixel_um, DENSITY_BIN_UM, slide.shape_yx)
    qc = slide_qc(cells, pixel_um, DENSITY_BIN_UM, slide.shape_yx)
    fig_paths["sizes"] = figs.size_density_figure(
        folder / "sizes.png", cells["area_px"].to_numpy() * pixel_um**2, density, DENSITY_BIN_UM
    )
    captions["sizes"] = "Cell areas and local cell density (bins without cells left out)."
    measured = [n for n in slide.channel_names if n in cells.columns]
    fig_paths["intensities"] = figs.intensity_figure(folder / "intensities.png", cells, measured)
    captions["intensities"] = "Per-channel distributions of the cell means (boxes: quartiles; whiskers: 1.5 IQR)."

    result = coexpression(cells, usable, thresholds) if usable else None
    seams = None
    rows: list[tuple[str, Any]] = [
        ("cells", len(cells)), ("pixel size (um)", pixel_um),
        ("cell area median (um^2) [p5, p95]",
         f"{qc.area_um2_median:.1f} [{qc.area_um2_p5:.1f}, {qc.area_um2_p95:.1f}]"),
        (f"median density (cells/mm^2, {DENSITY_BIN_UM:.0f} um bins)", qc.density_per_mm2_median),
    ]
    rows += [(k, summary[k]) for k in ("n_tiles", "tile_px", "halo_px", "n_nuclei") if k in summary]
    if "backend" in config:
        rows.append(("backend", config["backend"].get("name")))
    coex_rows: list[tuple[str, Any]] = []
    if result is not None:
        fig_paths["coexpression"] = figs.coexpression_figure(
            folder / "coexpression.png", _pair_matrix(result), result.pairs
        )
        captions["coexpression"] = (
            "Fraction of cells positive for both markers (diagonal: positive for one); "
            "mutually exclusive pairs boxed red. Thresholds: "
            + ", ".join(f"{k} > {v:.3g}" for k, v in result.thresholds.items())
        )
        coex_rows = [("impossible co-expression rate (any pair)", result.rate)]
        coex_rows += [(f"{k}", v) for k, v in result.pair_rates.items()]
        if all(f"{m}{REDSEA_SUFFIX}" in cells for p in usable for m in p):
            after = coexpression(cells, usable, result.thresholds | {
                f"{m}{REDSEA_SUFFIX}": t for m, t in result.thresholds.items()}, suffix=REDSEA_SUFFIX)
            coex_rows.append(("after REDSEA compensation (same thresholds)", after.rate))
        grid_yx = tile_yx or (max(1, max(slide.shape_yx) // 8),) * 2
        rates, counts = binned_rates(cells, result.impossible, grid_yx, slide.shape_yx)
        fig_paths["tiles"] = figs.tile_figure(folder / "tiles.png", counts, rates, grid_yx)
        captions["tiles"] = (
            "Cells per tile core and impossible co-expression rate per tile "
            + ("(the run's tile grid)." if tile_yx else f"({grid_yx[0]} px bins; no run grid recorded).")
        )
        if grid is not None:
            seams = seam_check(cells, result.impossible, grid)
            coex_rows += [
                (f"near seams (centroid within {grid.halo_px} px), {seams.n_near} cells", seams.near_rate),
                (f"tile interiors, {seams.n_interior} cells", seams.interior_rate),
            ]
    timings = summary.get("timings_s")
    if timings:
        fig_paths["timings"] = figs.timing_figure(folder / "timings.png", timings)
        captions["timings"] = f"Run stage timings; total {sum(timings.values()):.1f} s."

    sections = [f"<h1>tiled_seg QC report: {html.escape(Path(store).name)}</h1>",
                f"<table>{_rows(rows)}</table>"]
    if coex_rows:
        sections.append(f"<h2>Impossible co-expression</h2><table>{_rows(coex_rows)}</table>")
    else:
        sections.append('<p class="note">No exclusive marker pair found in the table.</p>')
    titles = {"overview": "Overview", "seams": "Tile seams", "sizes": "Cell size and density",
              "intensities": "Channel intensities", "coexpression": "Co-expression of exclusive pairs",
              "tiles": "Per tile", "timings": "Run timings"}
    for name, path in fig_paths.items():
        sections.append(
            f"<h2>{titles[name]}</h2><img src=\"{path.name}\" alt=\"{name}\">"
            f"<p class=\"note\">{html.escape(captions[name])}</p>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tiled_seg QC: "
        f"{html.escape(Path(store).name)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(sections) + "</body></html>\n"
    )
    target.write_text(page, encoding="utf-8")
    return ReportResult(html=target, figures=fig_paths, coexpression=result, seams=seams)
