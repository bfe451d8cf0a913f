"""Export cell tables in steinbock's layout, which steinbock's own readers open.

steinbock keeps one CSV per image in a folder per kind, all in px:
``intensities/<img>.csv`` (``Object`` then one mean per channel),
``regionprops/<img>.csv`` (``Object`` then skimage property names),
``neighbors/<img>.csv`` (``Object``, ``Neighbor``, ``Distance``, both
directions) and ``panel.csv`` (``channel``, ``name``, ``keep``). The mapping
from our column names to steinbock's lives here and only here.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tiled_seg.errors import OutputExistsError

__all__ = ["SteinbockTables", "steinbock_tables", "write_steinbock", "image_name", "STEINBOCK_MAX_ID"]

#: Largest object id steinbock's readers hold: they cast ids to its mask dtype, uint16.
STEINBOCK_MAX_ID = int(np.iinfo(np.uint16).max)

#: Our morphology names (without the unit suffix) that skimage, and so steinbock, names otherwise.
_SKIMAGE_NAMES = {
    "centroid_y": "centroid-0",
    "centroid_x": "centroid-1",
    "major_axis_length": "axis_major_length",
    "minor_axis_length": "axis_minor_length",
}

#: skimage regionprops names steinbock writes, in px (the ones our table can hold).
_REGIONPROPS = (
    "area", "centroid-0", "centroid-1", "axis_major_length", "axis_minor_length",
    "eccentricity", "perimeter", "solidity", "extent", "orientation",
    "equivalent_diameter_area", "feret_diameter_max", "area_convex", "area_filled",
)

_PX_SUFFIX = re.compile(r"_px2?$")


@dataclass(frozen=True)
class SteinbockTables:
    """The four tables of a steinbock export of one image (frames as steinbock writes them)."""

    intensities: pd.DataFrame
    regionprops: pd.DataFrame
    neighbors: pd.DataFrame
    panel: pd.DataFrame


def _steinbock_name(column: str) -> str | None:
    """steinbock's name of a px-unit morphology column, or None when steinbock has none.

    >>> _steinbock_name("major_axis_length_px"), _steinbock_name("area"), _steinbock_name("area_um2")
    ('axis_major_length', 'area', None)
    """
    if column.endswith(("_um", "_um2")):
        return None
    base = _PX_SUFFIX.sub("", column)
    name = _SKIMAGE_NAMES.get(base, base)
    return name if name in _REGIONPROPS else None


def steinbock_tables(
    table: pd.DataFrame,
    channel_names: Sequence[str],
    edges: pd.DataFrame,
    pixel_size_um: float,
    *,
    distance_kind: str = "centroid",
    id_column: str = "cell_id",
) -> SteinbockTables:
    """steinbock's intensities, regionprops, neighbours and panel frames of a cell table.

    Parameters
    ----------
    table : DataFrame
        One row per cell: ``id_column``, a mean-intensity column per channel
        and morphology columns (px-unit ones are exported; um ones are not,
        steinbock works in px).
    channel_names : sequence of str
        Channels, in panel order.
    edges : DataFrame
        Edge table with ``cell_a``, ``cell_b``, ``kind`` and ``distance_um``;
        the edges of kind ``distance_kind`` are steinbock's neighbours.
    pixel_size_um : float
        Pixel size (um), to give distances in px.
    distance_kind : str
        ``centroid`` or ``border``.
    id_column : str
        Column of the label ids (steinbock's ``Object``).
    """
    ids = table[id_column].to_numpy()
    intensities = pd.DataFrame({"Object": ids, **{n: table[n].to_numpy() for n in channel_names}})
    regionprops = pd.DataFrame({"Object": ids})
    for column in table.columns:
        name = _steinbock_name(str(column))
        if name is not None and name not in regionprops:
            regionprops[name] = table[column].to_numpy()
    graph = edges[edges["kind"] == distance_kind]
    distance_px = graph["distance_um"].to_numpy() / pixel_size_um
    neighbors = pd.DataFrame(
        {
            "Object": np.r_[graph["cell_a"].to_numpy(), graph["cell_b"].to_numpy()],
            "Neighbor": np.r_[graph["cell_b"].to_numpy(), graph["cell_a"].to_numpy()],
            "Distance": np.r_[distance_px, distance_px],
        }
    ).sort_values(["Object", "Neighbor"], ignore_index=True)
    panel = pd.DataFrame({"channel": list(channel_names), "name": list(channel_names),
                          "keep": 1})
    return SteinbockTables(intensities, regionprops, neighbors, panel)


def image_name(store: str | Path) -> str:
    """steinbock's image name of a store: its file name without the zarr suffixes.

    >>> image_name("/data/fov8.ome.zarr/")
    'fov8'
    """
    name = Path(str(store).rstrip("/")).name
    return re.sub(r"(\.ome)?\.zarr$", "", name) or "image"


def write_steinbock(
    directory: str | Path,
    image: str,
    tables: SteinbockTables,
    *,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write ``tables`` of image ``image`` into a steinbock folder.

    Writes ``intensities/<image>.csv``, ``regionprops/<image>.csv``,
    ``neighbors/<image>.csv`` and ``panel.csv`` (kept when it exists and
    lists the same channels, so several images share one folder). Warns
    when ids exceed :data:`STEINBOCK_MAX_ID`: steinbock's readers cast ids
    to uint16, so such cells would be misread there.

    Returns
    -------
    dict of str
        Path of each written file by kind (``steinbock_intensities``, ...).
    """
    directory = Path(directory)
    largest = int(tables.intensities["Object"].max()) if len(tables.intensities) else 0
    if largest > STEINBOCK_MAX_ID:
        warnings.warn(
            f"cell ids reach {largest}, more than steinbock's readers hold ({STEINBOCK_MAX_ID}, "
            "uint16): steinbock would misread them. Export smaller regions or read the "
            "CSVs with pandas.",
            UserWarning,
            stacklevel=2,
        )
    paths: dict[str, str] = {}
    for kind in ("intensities", "regionprops", "neighbors"):
        path = directory / kind / f"{image}.csv"
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it.")
        path.parent.mkdir(parents=True, exist_ok=True)
        getattr(tables, kind).to_csv(path, index=False)
        paths[f"steinbock_{kind}"] = str(path)
    panel = directory / "panel.csv"
    if panel.exists() and not overwrite:
        listed = pd.read_csv(panel)["name"].tolist()
        if listed != tables.panel["name"].tolist():
            raise OutputExistsError(
                f"{panel} lists channels {listed}, not this image's; write to another "
                "folder or pass --overwrite."
            )
    else:
        tables.panel.to_csv(panel, index=False)
    paths["steinbock_panel"] = str(panel)
    return paths
