"""Export a store (image, label images, cell table) as a SpatialData zarr store.

SpatialData is written by its own writer, so ``spatialdata.read_zarr`` reads
it back: the image under ``images/``, every label image under ``labels/`` and
the cell table under ``tables/``, annotating the cell labels (``region``,
``region_key``, ``instance_key``; instance ids are the label values). All
elements share the ``global`` coordinate system in micrometres. spatialdata
is an optional extra (``pip install 'tiled-seg[spatialdata]'``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad

from tiled_seg.errors import DependencyError, InputNotFoundError, OutputExistsError, PixelSizeError
from tiled_seg.io.fs import exists, remove_tree
from tiled_seg.io.ngff import list_labels, open_slide, read_labels
from tiled_seg.io.tables import DEFAULT_TABLE, list_tables, read_anndata_zarr, spatialdata_table

__all__ = ["SpatialDataExport", "export_spatialdata", "IMAGE_ELEMENT"]

#: Name of the image element (element names are unique across kinds).
IMAGE_ELEMENT = "image"


@dataclass(frozen=True)
class SpatialDataExport:
    """What :func:`export_spatialdata` wrote.

    Attributes
    ----------
    path : str
        The SpatialData store.
    image : str
        Name of the image element.
    labels : tuple of str
        Names of the label elements.
    table : str or None
        Name of the table element (None when the store has no cell table).
    region : str or None
        The label element the table annotates.
    """

    path: str
    image: str
    labels: tuple[str, ...]
    table: str | None
    region: str | None


def _spatialdata() -> Any:
    try:
        return importlib.import_module("spatialdata")
    except ImportError as error:
        raise DependencyError(
            f"exporting to SpatialData needs the spatialdata package ({error}); install it "
            "with pip install 'tiled-seg[spatialdata]' (in its own environment: it pins an "
            "older dask)."
        ) from None


def export_spatialdata(
    store: str | Path,
    out: str | Path,
    *,
    table: str = DEFAULT_TABLE,
    overwrite: bool = False,
) -> SpatialDataExport:
    """Write the image, label images and cell table of ``store`` as a SpatialData store.

    Parameters
    ----------
    store : str or Path
        An OME-NGFF store written by tiled_seg (in place or ``--output``).
    out : str or Path
        The SpatialData zarr store to write; must not exist unless ``overwrite``.
    table : str
        Cell table under ``store/tables`` (exported when present).
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    SpatialDataExport

    Raises
    ------
    DependencyError
        spatialdata is not installed.
    OutputExistsError, InputNotFoundError, PixelSizeError
    """
    sd = _spatialdata()
    from spatialdata.models import Image2DModel, Labels2DModel, TableModel
    from spatialdata.transformations import Scale

    store, out = str(store).rstrip("/"), str(out).rstrip("/")
    if exists(out) and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another output or pass --overwrite.")
    slide = open_slide(store)
    if slide.pixel_size_um is None:
        raise PixelSizeError(f"{store} does not record a pixel size; SpatialData needs one "
                             "for its micrometre coordinate system. Rewrite the store with one.")
    scale = {"global": Scale([slide.pixel_size_um] * 2, axes=("y", "x"))}
    factors = [2] * (len(slide.levels) - 1) or None
    image = Image2DModel.parse(
        slide.data, dims=("c", "y", "x"), c_coords=list(slide.channel_names),
        transformations=scale, scale_factors=factors,
    )
    names = [n for n in list_labels(store) if n != IMAGE_ELEMENT]
    labels = {
        name: Labels2DModel.parse(read_labels(store, name), dims=("y", "x"),
                                  transformations=scale, scale_factors=factors)
        for name in names
    }
    tables: dict[str, Any] = {}
    region = None
    if table in list_tables(store):
        adata = read_anndata_zarr(store, table)
        attrs = adata.uns.get("spatialdata_attrs", {})
        region = str(attrs.get("region", "cells")).rsplit("/", 1)[-1]
        if region not in labels:
            raise InputNotFoundError(
                f"the table {table!r} of {store} annotates labels {region!r}, which the "
                f"store does not have (present: {', '.join(names) or 'none'})."
            )
        adata = spatialdata_table(adata, region, attrs.get("region_key", "region"),
                                  attrs.get("instance_key", "cell_id"))
        spatial = adata.uns.pop("spatialdata_attrs")
        tables[table] = TableModel.parse(adata, **spatial)
    if exists(out):
        remove_tree(out)
    data = sd.SpatialData(images={IMAGE_ELEMENT: image}, labels=labels, tables=tables)
    # Unsharded, as the store's own arrays (and no warning about the default).
    with ad.settings.override(auto_shard_zarr_v3=False):
        data.write(out)
    return SpatialDataExport(path=out, image=IMAGE_ELEMENT, labels=tuple(names),
                             table=table if tables else None, region=region)
