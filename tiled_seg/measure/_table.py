"""Turn merged per-cell sums into the cell table, and the table into AnnData."""

from __future__ import annotations

from typing import Any, Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from tiled_seg.labels import first_of_groups
from tiled_seg.measure._morphology import moment_features

__all__ = ["cell_table", "nucleus_per_cell", "to_anndata"]

#: Column suffixes of the per-channel values other than the mean.
SUM_SUFFIX, NUCLEAR_SUFFIX, CYTOPLASM_SUFFIX = "_sum", "_nuclear", "_cytoplasm"


def nucleus_per_cell(pairs: np.ndarray, cell_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus of each cell by maximum overlap.

    Each nucleus is linked to the cell it overlaps most; each cell keeps the
    linked nucleus with which it shares most pixels. Ties go to the smaller id.

    Parameters
    ----------
    pairs : ndarray, shape (m, 3), int
        Rows ``(cell, nucleus, overlap_px)``.
    cell_ids : ndarray, shape (n,)
        Sorted cell ids.

    Returns
    -------
    nucleus_id : ndarray, shape (n,), int64
        0 where a cell has no nucleus.
    overlap : ndarray, shape (n,), int64
        Pixels shared by the cell and its nucleus (px).
    """
    nucleus_id = np.zeros(cell_ids.size, np.int64)
    overlap = np.zeros(cell_ids.size, np.int64)
    if not len(pairs):
        return nucleus_id, overlap
    cell, nucleus, shared = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    linked = first_of_groups(nucleus, -shared, cell)
    cell, nucleus, shared = cell[linked], nucleus[linked], shared[linked]
    best = first_of_groups(cell, -shared, nucleus)
    rows = np.searchsorted(cell_ids, cell[best])
    nucleus_id[rows] = nucleus[best]
    overlap[rows] = shared[best]
    return nucleus_id, overlap


def cell_table(
    sums: dict[str, np.ndarray], channel_names: Sequence[str], pixel_size_um: float
) -> pd.DataFrame:
    """One row per cell from the merged block partials (``BlockMeasurements.cells``).

    Column names carry their unit: ``_px`` (px or px**2 for areas), ``_um``,
    ``_um2``, ``_rad``; names without a suffix are unitless.

    - ``cell_id``; ``area_px`` (pixel count) and ``area_um2``;
    - ``centroid_y_px`` / ``centroid_x_px`` (pixel centres at integer
      coordinates, as in skimage) and ``centroid_y_um`` / ``centroid_x_um``;
    - ``bbox_min_y_px``, ``bbox_min_x_px``, ``bbox_max_y_px``,
      ``bbox_max_x_px`` (max exclusive);
    - ``perimeter_px`` / ``perimeter_um``, ``major_axis_length_px`` /
      ``_um``, ``minor_axis_length_px`` / ``_um``, ``eccentricity``,
      ``orientation_rad``: skimage's regionprops ``perimeter``,
      ``axis_major_length``, ``axis_minor_length``, ``eccentricity``,
      ``orientation``;
    - ``aspect_ratio`` (major axis length / equivalent circular diameter)
      and ``perimeter2_over_area`` (perimeter**2 / area, both in px), the
      Mesmer paper's shape metrics;
    - the mean of each channel under its own name and its sum as
      ``<name>_sum``;
    - with nuclei: ``nucleus_id`` (maximum overlap, 0 if none),
      ``nuclear_area_px`` (px of the cell inside that nucleus), ``nc_ratio``
      (nuclear_area_px / area_px, 0 without a nucleus), and per channel
      ``<name>_nuclear`` (mean over the cell's pixels inside any nucleus) and
      ``<name>_cytoplasm`` (mean over the rest; NaN when a compartment is
      empty).
    """
    count = sums["count"].astype(np.float64)
    columns: dict[str, Any] = {
        "cell_id": sums["label"].astype(np.int64),
        "area_px": sums["count"].astype(np.int64),
        "area_um2": count * pixel_size_um**2,
        "centroid_y_px": sums["sum_y"] / count,
        "centroid_x_px": sums["sum_x"] / count,
    }
    columns["centroid_y_um"] = columns["centroid_y_px"] * pixel_size_um
    columns["centroid_x_um"] = columns["centroid_x_px"] * pixel_size_um
    for corner in ("min_y", "min_x", "max_y", "max_x"):
        columns[f"bbox_{corner}_px"] = sums[corner].astype(np.int64)
    shape = moment_features(sums)
    perimeter = sums["perimeter"].astype(np.float64)
    columns["perimeter_px"] = perimeter
    columns["perimeter_um"] = perimeter * pixel_size_um
    for axis in ("major", "minor"):
        length = shape[f"{axis}_axis_length"]
        columns[f"{axis}_axis_length_px"] = length
        columns[f"{axis}_axis_length_um"] = length * pixel_size_um
    columns["eccentricity"] = shape["eccentricity"]
    columns["orientation_rad"] = shape["orientation"]
    columns["aspect_ratio"] = shape["major_axis_length"] / np.sqrt(4 * count / np.pi)
    columns["perimeter2_over_area"] = perimeter**2 / count
    means = sums["sum"] / count[:, None]
    for index, name in enumerate(channel_names):
        columns[name] = means[:, index]
    for index, name in enumerate(channel_names):
        columns[f"{name}{SUM_SUFFIX}"] = sums["sum"][:, index]
    if "pairs" in sums:
        nucleus_id, shared = nucleus_per_cell(sums["pairs"], columns["cell_id"])
        columns["nucleus_id"] = nucleus_id
        columns["nuclear_area_px"] = shared
        columns["nc_ratio"] = shared / count
        nuc_count = sums["nuc_count"].astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            nuclear = np.where(nuc_count > 0, sums["nuc_sum"] / nuc_count, np.nan)
            cyto_count = count[:, None] - nuc_count
            cytoplasm = np.where(
                cyto_count > 0, (sums["sum"] - sums["nuc_sum"]) / cyto_count, np.nan
            )
        for index, name in enumerate(channel_names):
            columns[f"{name}{NUCLEAR_SUFFIX}"] = nuclear[:, index]
        for index, name in enumerate(channel_names):
            columns[f"{name}{CYTOPLASM_SUFFIX}"] = cytoplasm[:, index]
    return pd.DataFrame(columns, copy=False)


def _graph(edges: pd.DataFrame, kind: str, index: pd.Index, values: str | None) -> sparse.csr_matrix:
    chosen = edges[edges["kind"] == kind]
    rows = index.get_indexer(chosen["cell_a"])
    cols = index.get_indexer(chosen["cell_b"])
    data = chosen[values].to_numpy() if values else np.ones(len(chosen))
    n = len(index)
    upper = sparse.coo_matrix((data, (rows, cols)), shape=(n, n))
    return (upper + upper.T).tocsr()


def _column_matrix(table: pd.DataFrame, columns: list[str], copy: bool) -> np.ndarray:
    """``table[columns]`` as an ``(n, len(columns))`` float64 array.

    Without ``copy``, when the columns are exactly the columns of one such
    array (as :func:`cell_table` builds them, views of its per-channel
    matrices), that array itself; otherwise a copy.
    """
    values = [table[c].to_numpy() for c in columns]
    base = values[0].base if values else None
    if (
        not copy and isinstance(base, np.ndarray) and base.dtype == np.float64
        and base.shape == (len(table), len(columns))
        and all(
            v.dtype == base.dtype and v.strides == base[:, i].strides
            and v.__array_interface__["data"][0] == base[:, i].__array_interface__["data"][0]
            for i, v in enumerate(values)
        )
    ):
        return base
    return table[columns].to_numpy(dtype=np.float64)


def to_anndata(
    table: pd.DataFrame,
    channel_names: Sequence[str],
    region: str,
    edges: pd.DataFrame | None = None,
    uns: dict[str, Any] | None = None,
    *,
    distance_kind: str = "centroid",
    copy: bool = True,
) -> ad.AnnData:
    """AnnData of a cell table: X = channel means, obs = everything else.

    ``obs`` gets ``region`` (the label image, e.g. ``labels/cells``) and keeps
    ``cell_id``; ``obsm['spatial']`` holds centroids (x, y) in um; layers
    hold the sums and, where present, the nuclear and cytoplasm means. With
    ``edges``: ``obsp['touching']`` (0/1) and the distance graph (edges of
    kind ``distance_kind``: ``centroid`` or ``border``) as
    ``obsp['spatial_connectivities']`` / ``obsp['spatial_distances']`` (um),
    as squidpy names them. With ``copy=False`` the AnnData shares memory
    with ``table``: ``obs`` holds its columns, and ``X`` and the layers of
    a table from :func:`cell_table` are the arrays its channel columns view
    (at 237k cells and 16 channels, 170 MB not copied).
    """
    names = list(channel_names)
    layer_columns = {
        "sum": [f"{n}{SUM_SUFFIX}" for n in names],
        "nuclear": [f"{n}{NUCLEAR_SUFFIX}" for n in names],
        "cytoplasm": [f"{n}{CYTOPLASM_SUFFIX}" for n in names],
    }
    channel_columns = set(names).union(*layer_columns.values())
    obs_columns = [c for c in table.columns if c not in channel_columns]
    obs = table[obs_columns] if copy else pd.DataFrame({c: table[c] for c in obs_columns}, copy=False)
    obs.insert(0, "region", pd.Categorical.from_codes(np.zeros(len(table), np.int8), [region]))
    obs.index = pd.Index(table["cell_id"].astype(str).to_numpy())
    adata = ad.AnnData(
        X=_column_matrix(table, names, copy),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(names, dtype=str)),
    )
    for layer, columns in layer_columns.items():
        if all(c in table.columns for c in columns):
            adata.layers[layer] = _column_matrix(table, columns, copy)
    adata.obsm["spatial"] = table[["centroid_x_um", "centroid_y_um"]].to_numpy()
    if edges is not None:
        index = pd.Index(table["cell_id"].to_numpy())
        adata.obsp["touching"] = _graph(edges, "touching", index, None)
        adata.obsp["spatial_connectivities"] = _graph(edges, distance_kind, index, None)
        adata.obsp["spatial_distances"] = _graph(edges, distance_kind, index, "distance_um")
    if uns:
        adata.uns["config"] = dict(uns)
    return adata
