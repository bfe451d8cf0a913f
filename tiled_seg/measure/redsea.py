"""REDSEA lateral spillover compensation of per-cell signals.

Signal from one cell's membrane is measured partly in the pixels of the cell
next to it ("lateral spillover"), so a T cell touching a B cell looks CD20+.
REDSEA (Bai et al. 2021, Front Immunol 12:652631; reference code
``nolanlab/REDSEA``, ``MIBIboundary_compensation_boundarySA.m``) corrects
the per-cell sums with the signal found along the cells' boundaries.

Formulation (boundary mode, as in the reference code)
-----------------------------------------------------
For cells ``i, j`` and one channel:

``S_i``
    the cell's summed signal (counts; the table's ``<channel>_sum``);
``A_i``
    its area (px);
``P_ij``
    the contact length of ``i`` and ``j`` (symmetric, ``P_ii = 0``): the
    number of pixels whose 3 x 3 window holds both labels. The reference
    code counts only the background pixels of label images whose cells are
    separated by a 1 px gap of zeros; counting every pixel makes the same
    count for such images and also measures cells that touch directly (as
    ours do);
``P_i = sum_j P_ij``
    the cell's total contact length;
``E_i``
    the boundary signal: the sum over the cell's pixels within
    ``element_size`` px (city-block distance, MATLAB's ``strel('diamond')``;
    default 2, the reference default) of a pixel with another label
    (another cell or background; pixels outside the image do not count);
``c``
    1 for compensation with reinforcement (the reference default,
    ``REDSEAChecker = 1``), 0 for subtraction only.

The compensated sum is::

    S'_i = max(0, S_i + c * E_i - sum_j (P_ji / P_j) * E_j)

that is, each neighbour ``j`` takes back the share of its boundary signal
that lies along its contact with ``i`` (spillover *into* ``i``), and ``i``
gets its own boundary signal back (what it spilled into its neighbours).
The compensated mean is ``S'_i / A_i``. Cells without contacts keep
``S_i`` (``P_i = 0``: nothing to exchange; the reference code divides by
zero there). Channels not selected for compensation keep their values, as
the reference's ``channelNormIdentity``.

Distribution
------------
``E`` (per cell) and ``P`` (per cell pair) are sums over pixels, computed per
block with a halo of ``max(element_size, 1)`` px (``dask.array.overlap``)
and merged as small sparse tables in a tree; the label image never crosses
the scheduler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import pandas as pd
import zarr
from scipy import sparse

from tiled_seg.blocks import tree_reduce
from tiled_seg.errors import AxesError, ConfigError, InputNotFoundError
from tiled_seg.io.tables import DEFAULT_TABLE

__all__ = [
    "REDSEA_SUFFIX",
    "boundary_partials",
    "combine_boundary_partials",
    "boundary_tables",
    "compensate_sums",
    "redsea_arrays",
    "compensate_store",
]

#: Suffix of the compensated mean columns in the cell table.
REDSEA_SUFFIX = "_redsea"
#: Label of pixels outside the image in a padded block.
_OUTSIDE = -1


def _diamond(radius: int) -> list[tuple[int, int]]:
    return [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if 0 < abs(dy) + abs(dx) <= radius
    ]


def _shifted(padded: np.ndarray, depth: int, dy: int, dx: int) -> np.ndarray:
    height, width = padded.shape[-2] - 2 * depth, padded.shape[-1] - 2 * depth
    return padded[..., depth + dy : depth + dy + height, depth + dx : depth + dx + width]


def boundary_partials(
    labels: np.ndarray, image: np.ndarray, depth: int, element_size: int = 2
) -> dict[str, np.ndarray]:
    """Boundary signal per cell and contact length per cell pair of one block.

    Parameters
    ----------
    labels : ndarray of int64, shape (Y + 2 depth, X + 2 depth)
        The block's labels with a halo of ``depth`` px on every side; pixels
        outside the image are -1.
    image : ndarray, shape (C, Y + 2 depth, X + 2 depth)
        Channel values of the same pixels.
    depth : int
        Halo (px), at least ``max(element_size, 1)``.
    element_size : int
        Boundary band width (px, city-block distance to another label).

    Returns
    -------
    dict of ndarray
        ``label`` (cells with boundary pixels in the block's core),
        ``boundary`` ``(n, C)`` (their boundary signal sums ``E``) and
        ``pairs`` ``(m, 3)`` rows ``(a, b, contact_px)`` with ``a < b``.
    """
    core = _shifted(labels, depth, 0, 0)
    band = np.zeros(core.shape, dtype=bool)
    for dy, dx in _diamond(element_size):
        other = _shifted(labels, depth, dy, dx)
        band |= (other != core) & (other != _OUTSIDE)
    band &= core > 0
    ids, inverse = np.unique(core[band], return_inverse=True)
    values = _shifted(image, depth, 0, 0)[:, band]
    boundary = np.stack(
        [np.bincount(inverse, weights=v, minlength=ids.size) for v in values], axis=1
    ) if ids.size else np.zeros((0, image.shape[0]))
    window = np.stack([_shifted(labels, depth, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    window = np.where(window > 0, window, 0)
    top = window.max(axis=0)
    low = np.where(window > 0, window, np.iinfo(np.int64).max).min(axis=0)
    several = window[:, (top > 0) & (low < top)].T
    several.sort(axis=1)
    several[:, 1:][several[:, 1:] == several[:, :-1]] = 0
    codes = []
    for a in range(9):
        for b in range(a + 1, 9):
            both = (several[:, a] > 0) & (several[:, b] > 0)
            codes.append(
                (several[both, a].astype(np.uint64) << np.uint64(32))
                | several[both, b].astype(np.uint64)
            )
    pairs = _count_codes(np.concatenate(codes), np.ones(sum(c.size for c in codes), np.int64))
    return {"label": ids.astype(np.int64), "boundary": boundary, "pairs": pairs}


def _count_codes(codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    keys, inverse = np.unique(codes, return_inverse=True)
    total = np.bincount(inverse, weights=counts, minlength=keys.size).astype(np.int64)
    return np.stack(
        [(keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(np.int64), total],
        axis=1,
    )


def combine_boundary_partials(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge partials of disjoint blocks (sums add per cell and per pair)."""
    labels = np.concatenate([p["label"] for p in parts])
    boundary = np.concatenate([p["boundary"] for p in parts])
    ids, inverse = np.unique(labels, return_inverse=True)
    merged = np.zeros((ids.size, boundary.shape[1]))
    np.add.at(merged, inverse, boundary)
    pairs = np.concatenate([p["pairs"] for p in parts])
    codes = (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64)
    return {"label": ids, "boundary": merged, "pairs": _count_codes(codes, pairs[:, 2])}


def _check(labels: Any, image: Any, element_size: int) -> None:
    if labels.ndim != 2 or image.ndim != 3 or tuple(image.shape[1:]) != tuple(labels.shape):
        raise AxesError(
            f"labels must be (Y, X) and image (C, Y, X) of the same field; got "
            f"{labels.shape} and {image.shape}."
        )
    if not 1 <= element_size <= 4:
        raise ConfigError(
            f"element_size={element_size} px is outside 1..4 (REDSEA's range; default 2)."
        )


def boundary_tables(
    labels: np.ndarray | da.Array, image: np.ndarray | da.Array, element_size: int = 2
) -> dict[str, np.ndarray]:
    """Boundary signals ``E`` and contact lengths ``P`` of a whole image.

    A numpy input is one block; a dask input is processed block by block
    (labels' chunks, all channels per block, halo ``max(element_size, 1)``
    px) and the partial tables merge in a tree.

    Returns
    -------
    dict of ndarray
        As :func:`boundary_partials`, for the whole image.
    """
    _check(labels, image, element_size)
    depth = max(element_size, 1)
    if not isinstance(labels, da.Array) and not isinstance(image, da.Array):
        padded = np.pad(np.asarray(labels, np.int64), depth, constant_values=_OUTSIDE)
        pixels = np.pad(np.asarray(image, np.float64), ((0, 0), (depth, depth), (depth, depth)))
        return boundary_partials(padded, pixels, depth, element_size)
    label_blocks = da.asarray(labels).astype(np.int64)
    image_blocks = da.asarray(image).rechunk((-1, *label_blocks.chunks))
    padded = da.overlap.overlap(label_blocks, depth=depth, boundary=_OUTSIDE)
    pixels = da.overlap.overlap(image_blocks, depth={0: 0, 1: depth, 2: depth}, boundary=0)
    kernel = dask.delayed(boundary_partials, pure=True)
    parts = [
        kernel(block, pixel_block, depth, element_size)
        for block, pixel_block in zip(padded.to_delayed().ravel(), pixels.to_delayed().ravel())
    ]
    (merged,) = dask.compute(tree_reduce(parts, combine_boundary_partials))
    return merged


def compensate_sums(
    cell_ids: np.ndarray,
    sums: np.ndarray,
    tables: dict[str, np.ndarray],
    reinforce: bool = True,
) -> np.ndarray:
    """REDSEA-compensated per-cell sums (see the module docstring).

    Parameters
    ----------
    cell_ids : ndarray of int, shape (n,)
        Sorted cell ids, the rows of ``sums``.
    sums : ndarray, shape (n, C)
        Summed signal per cell and channel (counts).
    tables : dict of ndarray
        Output of :func:`boundary_tables` for the same cells and channels.
    reinforce : bool
        Add each cell's own boundary signal back (REDSEA's default); False
        only subtracts the neighbours' spillover.

    Returns
    -------
    ndarray, shape (n, C)
        ``max(0, S + c E - F^T E)`` with ``F_ji = P_ji / P_j``.
    """
    n = cell_ids.size
    boundary = np.zeros(sums.shape)
    known = np.isin(tables["label"], cell_ids)
    boundary[np.searchsorted(cell_ids, tables["label"][known])] = tables["boundary"][known]
    pairs = tables["pairs"][np.isin(tables["pairs"][:, :2], cell_ids).all(axis=1)]
    a, b = np.searchsorted(cell_ids, pairs[:, 0]), np.searchsorted(cell_ids, pairs[:, 1])
    contact = sparse.coo_matrix(
        (np.r_[pairs[:, 2], pairs[:, 2]].astype(np.float64), (np.r_[a, b], np.r_[b, a])), shape=(n, n)
    ).tocsr()
    total = np.asarray(contact.sum(axis=1)).ravel()
    has_contact = total > 0
    fraction = sparse.diags(np.where(has_contact, 1.0 / np.where(has_contact, total, 1.0), 0.0)) @ contact
    spilled_in = fraction.T @ boundary
    own = boundary * has_contact[:, None] * (1.0 if reinforce else 0.0)
    return np.maximum(sums + own - spilled_in, 0.0)


def redsea_arrays(
    labels: np.ndarray | da.Array,
    image: np.ndarray | da.Array,
    channel_names: Sequence[str],
    element_size: int = 2,
    reinforce: bool = True,
) -> pd.DataFrame:
    """Per-cell raw and REDSEA-compensated means of a label image.

    Parameters
    ----------
    labels : ndarray or dask array of int, shape (Y, X)
        Cell labels, 0 = background.
    image : ndarray or dask array, shape (C, Y, X)
    channel_names : sequence of str
        One per channel.
    element_size : int
        Boundary band (px), see the module docstring.
    reinforce : bool
        REDSEA's reinforcement (default on).

    Returns
    -------
    DataFrame
        ``cell_id``, ``area`` (px), per channel the mean under its name and
        the compensated mean as ``<name>_redsea``.
    """
    _check(labels, image, element_size)
    if len(channel_names) != image.shape[0]:
        raise AxesError(f"{len(channel_names)} channel names for {image.shape[0]} channels.")
    tables = boundary_tables(labels, image, element_size)
    flat = np.asarray(labels).ravel()
    ids, inverse, area = np.unique(flat, return_inverse=True, return_counts=True)
    pixels = np.asarray(image, np.float64).reshape(image.shape[0], -1)
    sums = np.stack([np.bincount(inverse, weights=v, minlength=ids.size) for v in pixels], axis=1)
    keep = ids > 0
    ids, area, sums = ids[keep].astype(np.int64), area[keep], sums[keep]
    compensated = compensate_sums(ids, sums, tables, reinforce)
    frame: dict[str, Any] = {"cell_id": ids, "area_px": area}
    for index, name in enumerate(channel_names):
        frame[name] = sums[:, index] / area
    for index, name in enumerate(channel_names):
        frame[f"{name}{REDSEA_SUFFIX}"] = compensated[:, index] / area
    return pd.DataFrame(frame)


def compensate_store(
    store: str | Path,
    table: str = DEFAULT_TABLE,
    labels: str = "cells",
    channels: Sequence[str] | None = None,
    *,
    element_size: int = 2,
    reinforce: bool = True,
    image_store: str | Path | None = None,
) -> pd.DataFrame:
    """Add REDSEA-compensated means to the cell tables of a store.

    Reads ``labels/<labels>`` and the image lazily, computes the boundary
    tables block by block, compensates the table's sums (``<channel>_sum``)
    and writes ``<channel>_redsea`` columns into
    ``tables/<table>.parquet`` and, where the AnnData table exists, a layer
    ``redsea`` (all channels; those not compensated keep their means).

    Parameters
    ----------
    store : str or Path
        Store with the labels and the tables (``tiled-seg measure`` first).
    table, labels : str
        Table and label image names.
    channels : sequence of str, optional
        Channels to compensate (default: all channels of the table; REDSEA
        recommends surface markers).
    element_size : int
        Boundary band (px).
    reinforce : bool
        REDSEA's reinforcement.
    image_store : str or Path, optional
        Store with the image; default the run's source store recorded in
        ``store``'s attributes (``tiled_seg.source``), else ``store``.

    Returns
    -------
    DataFrame
        The updated cell table.
    """
    from tiled_seg.io.ngff import open_slide, read_labels
    from tiled_seg.io.tables import (
        list_tables,
        read_anndata_zarr,
        read_parquet,
        write_anndata_zarr,
        write_parquet,
    )

    store = str(store).rstrip("/")
    path = Path(store) / "tables" / f"{table}.parquet"
    if not path.exists():
        raise InputNotFoundError(f"{path} does not exist; run `tiled-seg measure {store}` first.")
    cells = read_parquet(path)
    # A run's output store is an image store of its input (its levels linked), so the
    # labels' own store serves the channels unless another image is named.
    slide = open_slide(image_store or store)
    names = list(channels) if channels else [n for n in slide.channel_names if n in cells.columns]
    missing = [n for n in names if n not in cells.columns]
    if missing:
        raise ConfigError(f"channels {missing} are not in {path}; measure them first.")
    index = [slide.channel_index(n) for n in names]
    tables = boundary_tables(read_labels(store, labels), slide.data[index], element_size)
    ids = cells["cell_id"].to_numpy(np.int64)
    area = cells["area_px"].to_numpy(np.float64)
    sums = np.stack(
        [
            cells[f"{n}_sum"].to_numpy(np.float64) if f"{n}_sum" in cells else cells[n].to_numpy() * area
            for n in names
        ],
        axis=1,
    )
    compensated = compensate_sums(ids, sums, tables, reinforce) / area[:, None]
    for column, name in enumerate(names):
        cells[f"{name}{REDSEA_SUFFIX}"] = compensated[:, column]
    write_parquet(cells, path, overwrite=True)
    if table in list_tables(store):
        adata = read_anndata_zarr(store, table)
        layer = np.asarray(adata.X, np.float64).copy()
        for column, name in enumerate(names):
            layer[:, list(adata.var_names).index(name)] = compensated[:, column]
        adata.layers["redsea"] = layer
        adata.uns["redsea"] = {
            "channels": names, "element_size": element_size, "reinforce": reinforce,
        }
        attrs = zarr.open_group(f"{store}/tables/{table}", mode="r").attrs.get("spatialdata_attrs", {})
        write_anndata_zarr(
            adata, store, table, region=attrs.get("region", f"labels/{labels}"),
            region_key=attrs.get("region_key", "region"),
            instance_key=attrs.get("instance_key", "cell_id"), overwrite=True,
        )
    return cells
