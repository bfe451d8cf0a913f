"""Write and read single-cell tables: Parquet, AnnData (zarr / h5ad), steinbock CSV.

The AnnData goes into ``<store>/tables/<name>`` in the SpatialData layout: an
AnnData zarr group with ``spatialdata_attrs`` that point at the label image
(``region``), the obs column naming it (``region_key``) and the obs column
with the label ids (``instance_key``). It is written in the zarr format of the
store (v3 for NGFF 0.5, v2 for NGFF 0.4) so that the hierarchy stays one
format.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import zarr

from tiled_seg.errors import InputNotFoundError, OutputExistsError
from tiled_seg.io._fs import exists, is_url, remove_tree

__all__ = [
    "write_parquet",
    "read_parquet",
    "write_anndata_zarr",
    "read_anndata_zarr",
    "write_steinbock",
    "list_tables",
]


def _check_free(path: str | Path, overwrite: bool) -> None:
    if exists(path):
        if not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")
        remove_tree(path)


def write_parquet(table: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> str:
    """Write ``table`` (one row per cell) to a Parquet file (path or URL); return its path."""
    _check_free(path, overwrite)
    if not is_url(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path), index=False)
    return str(path)


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_parquet` (path or URL)."""
    if not exists(path):
        raise InputNotFoundError(f"{path} does not exist; run `tiled-seg measure` first.")
    return pd.read_parquet(str(path))


def list_tables(store: str | Path) -> list[str]:
    """Names of the AnnData tables in ``store/tables`` (empty when none)."""
    root = zarr.open_group(str(store), mode="r")
    if "tables" not in root:
        return []
    with warnings.catch_warnings():
        # The Parquet files beside the AnnData groups are not zarr nodes.
        warnings.filterwarnings("ignore", message=".*not recognized as a component")
        return sorted(name for name, _ in root["tables"].groups())


def write_anndata_zarr(
    adata: ad.AnnData,
    store: str | Path,
    name: str,
    *,
    region: str,
    region_key: str = "region",
    instance_key: str = "cell_id",
    overwrite: bool = False,
) -> str:
    """Write ``adata`` to ``<store>/tables/<name>`` with SpatialData attributes.

    Parameters
    ----------
    adata : AnnData
        Its ``obs`` holds ``region_key`` and ``instance_key`` columns.
    store : str or Path
        An existing zarr store (the OME-NGFF image store).
    name : str
        Table name.
    region : str
        Element the rows annotate, e.g. ``"labels/cells"``.
    overwrite : bool
        Replace an existing table of that name.

    Returns
    -------
    str
        Path of the written group.
    """
    root = zarr.open_group(str(store), mode="a")
    tables = root.require_group("tables")
    if name in tables:
        if not overwrite:
            raise OutputExistsError(
                f"{store}/tables/{name} exists; pass --overwrite to replace it."
            )
        del tables[name]
    path = f"{str(store).rstrip('/')}/tables/{name}"
    zarr_format = root.metadata.zarr_format
    # Unsharded chunks, as the images and labels of the store are written.
    with ad.settings.override(zarr_write_format=zarr_format, auto_shard_zarr_v3=False):
        adata.write_zarr(path)
    group = zarr.open_group(path, mode="a")
    group.attrs["spatialdata_attrs"] = {
        "region": region,
        "region_key": region_key,
        "instance_key": instance_key,
    }
    return path


def read_anndata_zarr(store: str | Path, name: str) -> ad.AnnData:
    """Read the table ``<store>/tables/<name>`` written by :func:`write_anndata_zarr`."""
    if name not in list_tables(store):
        raise InputNotFoundError(
            f"{store} has no table {name!r}; present: "
            f"{', '.join(list_tables(store)) or 'none'}. Run `tiled-seg measure` first."
        )
    return ad.read_zarr(f"{str(store).rstrip('/')}/tables/{name}")


def write_steinbock(
    directory: str | Path,
    intensities: pd.DataFrame,
    regionprops: pd.DataFrame,
    neighbors: pd.DataFrame,
    *,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write steinbock-style ``intensities.csv``, ``regionprops.csv``, ``neighbors.csv``.

    Parameters
    ----------
    directory : str or Path
        Output folder, created if needed.
    intensities : DataFrame
        ``Object`` (cell id) then one mean-intensity column per channel.
    regionprops : DataFrame
        ``Object`` then skimage-named properties (``area``, ``centroid-0``,
        ``centroid-1``, ``axis_major_length``, ...; px units as in steinbock).
    neighbors : DataFrame
        ``Object``, ``Neighbor``, ``Distance`` (px), one row per direction.

    Returns
    -------
    dict of str
        Path of each written file by kind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    frames: dict[str, Any] = {
        "intensities": intensities,
        "regionprops": regionprops,
        "neighbors": neighbors,
    }
    for kind, frame in frames.items():
        path = directory / f"{kind}.csv"
        _check_free(path, overwrite)
        frame.to_csv(path, index=False)
        paths[f"steinbock_{kind}"] = str(path)
    return paths
