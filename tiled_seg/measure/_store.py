"""Measure the labels of a store and write the cell tables."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import pandas as pd

from tiled_seg.blocks import Progress
from tiled_seg.errors import AxesError, ChannelError, ConfigError, OutputExistsError, PixelSizeError
from tiled_seg.io.fs import exists, join
from tiled_seg.io.ngff import label_array, list_labels, open_slide
from tiled_seg.io.regions import RegionReader
from tiled_seg.io.steinbock import image_name, steinbock_tables, write_steinbock
from tiled_seg.io.tables import (
    DEFAULT_TABLE,
    list_tables,
    table_metadata,
    write_anndata_zarr,
    write_parquet,
)
from tiled_seg.measure._blocks import BlockMeasurements, MeasureJob
from tiled_seg.measure._distributed import hull_features, measure_blocks
from tiled_seg.measure._morphology import MORPHOLOGIES
from tiled_seg.measure._neighbours import centroid_pairs
from tiled_seg.measure._table import cell_table, to_anndata
from tiled_seg.tiling import BLOCK_PX, plan_blocks

__all__ = [
    "MeasureResult", "measure_arrays", "edge_table", "measure_store", "OUTPUTS", "NEIGHBOURS",
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


def edge_table(
    measured: BlockMeasurements,
    table: pd.DataFrame,
    pixel_size_um: float,
    distance_um: float,
    neighbours: str = "centroids",
) -> pd.DataFrame:
    """Edge table of touching cells and of cells within ``distance_um``.

    Parameters
    ----------
    measured : BlockMeasurements
        Merged block results (touching pairs; border pairs for ``borders``).
    table : DataFrame
        Cell table with ``cell_id`` (sorted) and centroids in um.
    pixel_size_um : float
        Pixel size (um).
    distance_um : float
        Largest distance (um) of the distance graph.
    neighbours : {"centroids", "borders"}
        Distance graph: centroids within ``distance_um`` (kind ``centroid``),
        or cells whose closest pixel centres are within ``distance_um``
        (kind ``border``, steinbock's ``--type borders``; touching cells are
        1 px apart).

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
    touching = measured.touching
    rows_a, rows_b = np.searchsorted(ids, touching[:, 0]), np.searchsorted(ids, touching[:, 1])
    touch_distance = np.linalg.norm(points[rows_a] - points[rows_b], axis=1)
    kind = _EDGE_KIND[neighbours]
    if neighbours == "borders":
        near_a, near_b = measured.border[:, 0], measured.border[:, 1]
        distances = measured.border_px * pixel_size_um
    else:
        pairs, distances = centroid_pairs(points, distance_um)
        near_a, near_b = ids[pairs[:, 0]], ids[pairs[:, 1]]
    return pd.DataFrame(
        {
            "cell_a": np.r_[touching[:, 0], near_a].astype(np.int64),
            "cell_b": np.r_[touching[:, 1], near_b].astype(np.int64),
            "kind": pd.Categorical.from_codes(
                np.repeat(np.array([0, 1], np.int8), [len(touching), len(near_a)]),
                categories=["touching", kind],
            ),
            "distance_um": np.r_[touch_distance, distances],
        }
    )


def _check_morphology(morphology: str) -> None:
    if morphology not in MORPHOLOGIES:
        raise ConfigError(f"unknown morphology {morphology!r}; choose from {list(MORPHOLOGIES)}.")


def _measure(
    job: MeasureJob,
    channel_names: Sequence[str],
    pixel_size_um: float,
    morphology: str,
    block_px: int,
    progress: Progress | None,
) -> tuple[pd.DataFrame, BlockMeasurements]:
    """The cell table and the merged graphs of ``job`` (block results without the cell partials)."""
    blocks = plan_blocks(job.labels.shape_yx, job.labels.chunk_yx, block_px)
    measured = measure_blocks(job, blocks, progress)
    table = cell_table(measured.cells, channel_names, pixel_size_um)
    if morphology == "full" and len(table):
        boxes = pd.DataFrame(
            {
                "label": table["cell_id"],
                **{k: table[f"bbox_{k}_px"] for k in ("min_y", "min_x", "max_y", "max_x")},
            }
        )
        shapes = hull_features(job.labels, boxes, blocks, progress).rename(columns={"label": "cell_id"})
        table = table.merge(shapes, on="cell_id", how="left", validate="one_to_one")
    # The merged cell partials are as large as the table and not needed past it.
    return table, replace(measured, cells={})


def measure_arrays(
    labels: np.ndarray | da.Array,
    image: np.ndarray | da.Array,
    channel_names: Sequence[str],
    pixel_size_um: float,
    nuclei: np.ndarray | da.Array | None = None,
    *,
    morphology: str = "default",
    block_px: int = BLOCK_PX,
) -> pd.DataFrame:
    """Cell table of ``(Y, X)`` labels over a ``(C, Y, X)`` image (see ``cell_table``).

    Everything comes from one pass of block tasks (blocks of about
    ``block_px``, whole chunks of ``labels``); ``morphology="full"`` adds the
    convex-hull descriptors (``HULL_COLUMNS``) from per-cell crops.
    """
    _check_morphology(morphology)
    if np.ndim(image) != 3:
        raise AxesError(f"image must be (C, Y, X); got shape {np.shape(image)}.")
    if len(channel_names) != image.shape[0]:
        raise ChannelError(
            f"{len(channel_names)} channel names for {image.shape[0]} channels; "
            "give one name per channel."
        )
    job = MeasureJob(
        labels=RegionReader(labels, ("y", "x")),
        image=RegionReader(image, ("c", "y", "x")),
        nuclei=None if nuclei is None else RegionReader(nuclei, ("y", "x")),
    )
    table, _ = _measure(job, channel_names, pixel_size_um, morphology, block_px, None)
    return table


def _write_parquet_table(
    frame: pd.DataFrame, path: str, provenance: dict[str, Any], overwrite: bool
) -> str:
    """One table (cells or edges) as a Parquet file with its provenance; its path."""
    return write_parquet(frame, path, metadata=table_metadata(frame, **provenance), overwrite=overwrite)


def _write_anndata(
    table: pd.DataFrame, edges: pd.DataFrame, names: list[str], labels: str,
    config: dict[str, Any] | None, neighbours: str, store: str, table_name: str,
    into_store: bool, h5ad: str | Path | None, overwrite: bool,
) -> dict[str, str]:
    """The AnnData table into the store (``into_store``) and / or ``h5ad``; paths by kind."""
    # Sharing the table's channel matrices: adata lives only for the writes.
    adata = to_anndata(table, names, f"labels/{labels}", edges, config,
                       distance_kind=_EDGE_KIND[neighbours], copy=False)
    paths: dict[str, str] = {}
    if into_store:
        paths["anndata"] = write_anndata_zarr(adata, store, table_name, region=f"labels/{labels}",
                                              overwrite=overwrite)
    if h5ad is not None:
        target = Path(h5ad)
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} exists; pass --overwrite to replace it.")
        target.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(target)
        paths["h5ad"] = str(target)
    return paths


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
    morphology: str = "default",
    block_px: int = BLOCK_PX,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    image_store: str | Path | None = None,
    progress: Progress | None = None,
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
        ``--type borders``); see :func:`edge_table`.
    morphology : {"default", "full"}
        ``default``: area, centroid, box, perimeter and moment features
        (vectorised); ``full`` adds solidity, asymmetry, concavities and
        fill from per-cell convex hulls (slower).
    block_px : int
        Side (px) of the blocks each task reads (rounded to whole chunks).
    overwrite : bool
        Replace existing outputs.
    config : dict, optional
        Run configuration, stored in the AnnData's ``uns['config']``.
    image_store : str or Path, optional
        Store holding the image when the labels were written to a separate
        output store (default: ``store``).
    progress : callable, optional
        ``progress(stage, done, total)`` as blocks finish.

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
    _check_morphology(morphology)
    slide = open_slide(image_store or store, pixel_size_um)
    if slide.pixel_size_um is None:
        raise PixelSizeError(
            f"{store} does not record a pixel size; give it with --pixel-size-um."
        )
    names = list(channels) if channels else list(slide.channel_names)
    index = [slide.channel_index(n) for n in names]
    job = MeasureJob(
        labels=RegionReader(label_array(store, labels)),
        image=slide.reader(index),
        nuclei=RegionReader(label_array(store, nuclei)) if nuclei and nuclei in list_labels(store) else None,
        connectivity=connectivity,
        border_dmax_px=distance_um / slide.pixel_size_um if neighbours == "borders" else None,
    )
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
    table, measured = _measure(job, names, slide.pixel_size_um, morphology, block_px, progress)
    provenance: dict[str, Any] = dict(pixel_size_um=slide.pixel_size_um, source_image=slide.path,
                                      labels=f"labels/{labels}", config=config)
    paths: dict[str, str] = {}
    # The Parquet files are written on a thread beside the edge table and the
    # AnnData: they spend most of their time in compression and I/O outside the GIL.
    with ThreadPoolExecutor(max_workers=1) as parquet_writer:
        parquet = {}
        if "parquet" in outputs:
            parquet["parquet"] = parquet_writer.submit(
                _write_parquet_table, table, planned["parquet"], provenance, overwrite
            )
        edges = edge_table(measured, table, slide.pixel_size_um, distance_um, neighbours)
        if "parquet" in outputs:
            parquet["neighbours"] = parquet_writer.submit(
                _write_parquet_table, edges, join(tables_dir, f"{table_name}_neighbours.parquet"),
                provenance, overwrite,
            )
        if "anndata" in outputs or h5ad is not None:
            paths.update(_write_anndata(
                table, edges, names, labels, config, neighbours, store, table_name,
                "anndata" in outputs, h5ad, overwrite,
            ))
        paths.update({kind: future.result() for kind, future in parquet.items()})
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
