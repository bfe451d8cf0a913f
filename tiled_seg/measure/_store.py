"""Measure the labels of a store and write the cell tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import pandas as pd

from tiled_seg.errors import ChannelError, ConfigError, OutputExistsError, PixelSizeError
from tiled_seg.io._fs import exists, join
from tiled_seg.io.ngff import list_labels, open_slide, read_labels
from tiled_seg.io.tables import (
    DEFAULT_TABLE,
    list_tables,
    table_metadata,
    write_anndata_zarr,
    write_parquet,
)
from tiled_seg.io.steinbock import image_name, steinbock_tables, write_steinbock
from tiled_seg.measure._distributed import (
    aggregate_cells,
    border_edges_dask,
    morphology_dask,
    touching_dask,
)
from tiled_seg.measure._neighbours import centroid_pairs
from tiled_seg.measure._table import cell_table, to_anndata

__all__ = [
    "MeasureResult", "measure_arrays", "neighbour_edges", "measure_store", "OUTPUTS", "NEIGHBOURS",
]

#: Outputs ``measure_store`` can write into the store.
OUTPUTS = ("anndata", "parquet")

#: Distance graphs ``measure_store`` can build (steinbock's ``--type``).
NEIGHBOURS = ("centroids", "borders")

#: Edge kind of each distance graph in the edge table.
_EDGE_KIND = {"centroids": "centroid", "borders": "border"}


@dataclass(frozen=True)
class MeasureResult:
    """What :func:`measure_store` wrote.

    Attributes
    ----------
    paths : dict of str
        Written path by kind: ``anndata``, ``parquet``, ``neighbours``,
        ``h5ad``, ``steinbock_intensities`` ... (only those written).
    n_cells : int
        Rows of the cell table.
    table_shape : (int, int)
        Rows and columns of the cell table.
    table : DataFrame
        The cell table itself.
    edges : DataFrame
        The neighbour edge table.
    """

    paths: dict[str, str]
    n_cells: int
    table_shape: tuple[int, int]
    table: pd.DataFrame = field(repr=False, compare=False)
    edges: pd.DataFrame = field(repr=False, compare=False)


def neighbour_edges(
    labels: da.Array,
    table: pd.DataFrame,
    pixel_size_um: float,
    distance_um: float,
    connectivity: int = 1,
    neighbours: str = "centroids",
) -> pd.DataFrame:
    """Edge table of touching cells and of cells within ``distance_um``.

    Parameters
    ----------
    labels : dask array, shape (Y, X), integer
    table : DataFrame
        Cell table with ``cell_id`` (sorted) and centroids in um.
    pixel_size_um : float
        Pixel size (um).
    distance_um : float
        Largest distance (um) of the distance graph.
    connectivity : {1, 2}
        Pixel contact rule of the touching graph.
    neighbours : {"centroids", "borders"}
        Distance graph: centroids within ``distance_um`` (kind ``centroid``),
        or cells whose closest pixel centres are within ``distance_um``
        (kind ``border``, see :func:`border_edges_dask`).

    Returns
    -------
    DataFrame
        ``cell_a < cell_b``, ``kind`` (``touching``, then ``centroid`` or
        ``border``) and ``distance_um``: the centroid distance (um) for
        ``touching`` and ``centroid`` edges, the border distance (um) for
        ``border`` edges.
    """
    ids = table["cell_id"].to_numpy()
    points = table[["centroid_y_um", "centroid_x_um"]].to_numpy()
    touching = touching_dask(labels, connectivity)
    rows_a, rows_b = np.searchsorted(ids, touching[:, 0]), np.searchsorted(ids, touching[:, 1])
    touch_distance = np.linalg.norm(points[rows_a] - points[rows_b], axis=1)
    kind = _EDGE_KIND[neighbours]
    if neighbours == "borders":
        border = border_edges_dask(labels, distance_um / pixel_size_um)
        near_a, near_b = border["cell_a"].to_numpy(), border["cell_b"].to_numpy()
        distances = border["distance_px"].to_numpy() * pixel_size_um
    else:
        pairs, distances = centroid_pairs(points, distance_um)
        near_a, near_b = ids[pairs[:, 0]], ids[pairs[:, 1]]
    return pd.DataFrame(
        {
            "cell_a": np.r_[touching[:, 0], near_a].astype(np.int64),
            "cell_b": np.r_[touching[:, 1], near_b].astype(np.int64),
            "kind": pd.Categorical(
                ["touching"] * len(touching) + [kind] * len(near_a),
                categories=["touching", kind],
            ),
            "distance_um": np.r_[touch_distance, distances],
        }
    )


def measure_arrays(
    labels: da.Array,
    image: da.Array,
    channel_names: Sequence[str],
    pixel_size_um: float,
    nuclei: da.Array | None = None,
    *,
    morphology: bool = True,
) -> pd.DataFrame:
    """Cell table of ``(Y, X)`` labels over a ``(C, Y, X)`` image (see ``cell_table``).

    Intensities, centroids and boxes come from a reduction over chunks;
    morphology (``MORPHOLOGY_COLUMNS``) from per-cell crops.
    """
    labels, image = da.asarray(labels), da.asarray(image)
    nuclei = da.asarray(nuclei) if nuclei is not None else None
    if len(channel_names) != image.shape[0]:
        raise ChannelError(
            f"{len(channel_names)} channel names for {image.shape[0]} channels; "
            "give one name per channel."
        )
    sums = aggregate_cells(labels, image, nuclei)
    table = cell_table(sums, channel_names, pixel_size_um)
    if morphology and len(table):
        boxes = pd.DataFrame(
            {
                "label": table["cell_id"],
                **{k: table[f"bbox_{k}"] for k in ("min_y", "min_x", "max_y", "max_x")},
            }
        )
        shapes = morphology_dask(labels, boxes).rename(columns={"label": "cell_id"})
        table = table.merge(shapes, on="cell_id", how="left", validate="one_to_one")
    return table


def measure_store(
    store: str | Path,
    labels: str = "cells",
    nuclei: str | None = "nuclei",
    channels: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    table_name: str = DEFAULT_TABLE,
    distance_um: float = 20.0,
    outputs: Sequence[str] = OUTPUTS,
    *,
    h5ad: str | Path | None = None,
    steinbock_dir: str | Path | None = None,
    connectivity: int = 1,
    neighbours: str = "centroids",
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    image_store: str | Path | None = None,
) -> MeasureResult:
    """Measure ``labels/<labels>`` of ``store`` and write the cell tables.

    Parameters
    ----------
    store : str or Path
        OME-NGFF store with the image and its label images.
    labels : str
        Cell label image to measure.
    nuclei : str or None
        Nucleus label image for compartment means and the N/C ratio; used
        when the store has it, ignored when absent; None to skip.
    channels : sequence of str, optional
        Channels to measure (default: all).
    pixel_size_um : float, optional
        Pixel size in um; default from the store's metadata.
    table_name : str
        Name of the table under ``tables/``.
    distance_um : float
        Largest distance (um) of the distance neighbour graph: between
        centroids, or between borders with ``neighbours="borders"``.
    outputs : sequence of {"anndata", "parquet"}
        ``anndata``: ``<store>/tables/<table_name>`` (SpatialData layout);
        ``parquet``: ``<store>/tables/<table_name>.parquet`` (cell table) and
        ``<store>/tables/<table_name>_neighbours.parquet`` (edge table).
    h5ad : str or Path, optional
        Also write the AnnData there.
    steinbock_dir : str or Path, optional
        Also export to this steinbock folder: ``intensities/<img>.csv``,
        ``regionprops/<img>.csv``, ``neighbors/<img>.csv``, ``panel.csv``,
        ``<img>`` the store's name (see :mod:`tiled_seg.io.steinbock`).
    connectivity : {1, 2}
        Pixel contact rule of the touching graph (4- or 8-connectivity).
    neighbours : {"centroids", "borders"}
        Distance graph written to the edge table, ``obsp`` and steinbock's
        neighbors.csv: centroid distance, or border distance (smallest
        distance between pixel centres of two cells, steinbock's
        ``--type borders``); see :func:`neighbour_edges`.
    overwrite : bool
        Replace existing outputs.
    config : dict, optional
        Run configuration, stored in the AnnData's ``uns['config']``.
    image_store : str or Path, optional
        Store holding the image when the labels were written to a separate
        output store (default: ``store``).

    Returns
    -------
    MeasureResult
    """
    store = str(store).rstrip("/")
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ConfigError(f"unknown outputs {unknown}; choose from {list(OUTPUTS)}.")
    if connectivity not in (1, 2):
        raise ConfigError(f"connectivity must be 1 or 2; got {connectivity}.")
    if neighbours not in NEIGHBOURS:
        raise ConfigError(f"unknown neighbours {neighbours!r}; choose from {list(NEIGHBOURS)}.")
    if not distance_um > 0:
        raise ConfigError(f"neighbour distance must be > 0 um; got {distance_um}.")
    slide = open_slide(image_store or store, pixel_size_um)
    if slide.pixel_size_um is None:
        raise PixelSizeError(
            f"{store} does not record a pixel size; give it with --pixel-size-um."
        )
    names = list(channels) if channels else list(slide.channel_names)
    index = [slide.channel_index(n) for n in names]
    image = slide.data[index] if index != list(range(len(slide.channel_names))) else slide.data
    cells = read_labels(store, labels)
    nucleus_labels = read_labels(store, nuclei) if nuclei and nuclei in list_labels(store) else None
    tables_dir = join(store, "tables")
    planned = {
        "anndata": join(tables_dir, table_name),
        "parquet": join(tables_dir, f"{table_name}.parquet"),
    }
    if not overwrite:
        for kind in outputs:
            taken = table_name in list_tables(store) if kind == "anndata" else exists(planned[kind])
            if taken:
                raise OutputExistsError(f"{planned[kind]} exists; pass --overwrite to replace it.")
    table = measure_arrays(cells, image, names, slide.pixel_size_um, nucleus_labels)
    edges = neighbour_edges(
        cells, table, slide.pixel_size_um, distance_um, connectivity, neighbours
    )
    paths: dict[str, str] = {}
    if "parquet" in outputs:
        provenance = dict(pixel_size_um=slide.pixel_size_um, source_image=slide.path,
                          labels=f"labels/{labels}", config=config)
        paths["parquet"] = write_parquet(
            table, planned["parquet"], metadata=table_metadata(table, **provenance),
            overwrite=overwrite,
        )
        paths["neighbours"] = write_parquet(
            edges, join(tables_dir, f"{table_name}_neighbours.parquet"),
            metadata=table_metadata(edges, **provenance), overwrite=overwrite,
        )
    adata = None
    if "anndata" in outputs or h5ad is not None:
        adata = to_anndata(
            table, names, f"labels/{labels}", edges, config, distance_kind=_EDGE_KIND[neighbours]
        )
    if "anndata" in outputs:
        paths["anndata"] = write_anndata_zarr(
            adata, store, table_name, region=f"labels/{labels}", overwrite=overwrite
        )
    if h5ad is not None:
        target = Path(h5ad)
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} exists; pass --overwrite to replace it.")
        target.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(target)
        paths["h5ad"] = str(target)
    if steinbock_dir is not None:
        frames = steinbock_tables(
            table, names, edges, slide.pixel_size_um, distance_kind=_EDGE_KIND[neighbours]
        )
        paths.update(write_steinbock(steinbock_dir, image_name(store), frames, overwrite=overwrite))
    return MeasureResult(
        paths=paths,
        n_cells=len(table),
        table_shape=(int(table.shape[0]), int(table.shape[1])),
        table=table,
        edges=edges,
    )
