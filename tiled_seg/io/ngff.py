"""Read and write OME-NGFF (0.4 and 0.5) images and labels.

Metadata is written with plain zarr so that chunks can be written region by
region from worker tasks; reading it back through ome-zarr-py's ``Reader`` is
tested.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import dask.array as da
import numpy as np
import zarr
from scipy import ndimage

from tiled_seg import __version__
from tiled_seg.blocks import Progress, store_blocks
from tiled_seg.errors import (
    AxesError,
    ChannelError,
    InputFormatError,
    InputNotFoundError,
    NotNGFFError,
    OutputExistsError,
    PixelSizeError,
)
from tiled_seg.io.fs import exists, is_url, remove_tree
from tiled_seg.io.regions import RegionReader, read_region
from tiled_seg.tiling import BLOCK_PX, DEFAULT_CHUNK_PX, plan_blocks

__all__ = [
    "Slide",
    "open_group",
    "ome_attrs",
    "open_slide",
    "write_image",
    "write_label_images",
    "write_label_pyramids",
    "write_labels",
    "read_labels",
    "label_array",
    "list_labels",
    "pyramid_shapes",
    "check_pixel_size_um",
    "find_unreadable_block",
    "link_image",
    "NGFFVersion",
]

NGFFVersion = Literal["0.4", "0.5"]

#: Smallest side (px) a pyramid level may have; coarser levels are not written.
MIN_LEVEL_SIDE_PX = 256


@dataclass(frozen=True)
class Slide:
    """A multichannel image opened from an OME-NGFF store.

    Attributes
    ----------
    path : str
        Path or URL of the store (the group holding ``multiscales``).
    levels : tuple of dask.array.Array
        Pyramid levels, each ``(C, Y, X)``; ``levels[0]`` is full resolution.
    channel_names : tuple of str
        One unique name per channel.
    pixel_size_um : float or None
        Size of one full-resolution pixel in micrometres, or None when the
        store does not say and none was given.
    ngff_version : str
        ``"0.4"`` or ``"0.5"``.
    """

    path: str
    levels: tuple[da.Array, ...]
    channel_names: tuple[str, ...]
    pixel_size_um: float | None
    ngff_version: str
    #: The full-resolution zarr array and its axes, for direct region reads.
    source: zarr.Array = field(repr=False, compare=False)
    axes: tuple[str, ...] = ("c", "y", "x")
    level_factors: tuple[float, ...] = field(default=(1.0,))
    #: The zarr array of every level, for direct region reads.
    level_sources: tuple[zarr.Array, ...] = field(default=(), repr=False, compare=False)

    @property
    def data(self) -> da.Array:
        """Full-resolution ``(C, Y, X)`` dask array."""
        return self.levels[0]

    @property
    def shape_yx(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def chunk_yx(self) -> tuple[int, int]:
        """Zarr chunk size (px) of the full-resolution level in y and x."""
        return int(self.data.chunksize[1]), int(self.data.chunksize[2])

    def read_region(self, channels: Sequence[int], rows: slice, columns: slice) -> np.ndarray:
        """Read ``(len(channels), rows, columns)`` at full resolution as numpy.

        Reads the zarr array directly (no dask graph), which is what a tile
        task needs.
        """
        block = read_region(self.source, self.axes, rows, columns, channels if "c" in self.axes else None)
        return block if "c" in self.axes else block[None]

    def reader(self, channels: Sequence[int] | None = None, level: int = 0) -> RegionReader:
        """A picklable handle for direct region reads of ``channels`` at pyramid ``level``."""
        source = self.level_sources[level] if self.level_sources else self.source
        picked = tuple(channels) if channels is not None and "c" in self.axes else None
        return RegionReader(source, self.axes, picked, image=True)

    def channel_index(self, name: str) -> int:
        """Index of channel ``name``; a :class:`ChannelError` lists the names."""
        try:
            return self.channel_names.index(name)
        except ValueError:
            raise ChannelError(
                f"channel {name!r} is not in the slide {self.path}; available "
                f"channels: {', '.join(self.channel_names)}. Fix the panel in "
                "the run configuration."
            ) from None


#: Plausible pixel sizes (um): from electron-microscopy-like 1 nm to 1 mm.
PIXEL_SIZE_RANGE_UM = (1e-3, 1e3)


def check_pixel_size_um(pixel_size_um: float | None, source: str) -> None:
    """Raise :class:`PixelSizeError` unless ``pixel_size_um`` is None or plausible.

    Parameters
    ----------
    pixel_size_um : float or None
        Pixel size in um.
    source : str
        What the value belongs to (a path), named in the message.
    """
    low, high = PIXEL_SIZE_RANGE_UM
    if pixel_size_um is not None and not low <= pixel_size_um <= high:
        raise PixelSizeError(
            f"pixel size {pixel_size_um} um of {source} is implausible (expected "
            f"{low} to {high} um); give the true value with --pixel-size-um "
            "(e.g. 1.0 for IMC)."
        )


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    path = str(path)
    if "://" not in path and not Path(path).exists():
        raise InputNotFoundError(
            f"{path} does not exist; give the path of an OME-Zarr store "
            "(convert TIFF/MIBI/IMC files with `tiled-seg convert`)."
        )
    try:
        node = zarr.open(path, mode=mode)
    except Exception as error:  # zarr raises several types for non-stores
        raise NotNGFFError(
            f"{path} is not a zarr store ({error}); convert the image with "
            "`tiled-seg convert IN OUT.ome.zarr`."
        ) from error
    if not isinstance(node, zarr.Group):
        raise NotNGFFError(
            f"{path} is a bare zarr array, not an OME-NGFF image group; "
            "convert it with `tiled-seg convert`."
        )
    return node


def ome_attrs(group: zarr.Group) -> tuple[dict[str, Any], str]:
    """Return the NGFF attributes of ``group`` and their version."""
    attrs = group.attrs.asdict()
    if "ome" in attrs:
        ome = dict(attrs["ome"])
        return ome, str(ome.get("version", "0.5"))
    version = "0.4"
    for multiscale in attrs.get("multiscales", []):
        version = str(multiscale.get("version", version))
    return attrs, version


def _axis_names(axes: Sequence[Any]) -> list[str]:
    return [a["name"] if isinstance(a, dict) else str(a) for a in axes]


def _scale_of(dataset: dict[str, Any], axes: list[str]) -> dict[str, float]:
    scale = [1.0] * len(axes)
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(s) for s in transform["scale"]]
    return dict(zip(axes, scale))


def _to_cyx(array: da.Array, axes: list[str], path: str) -> da.Array:
    """Reorder ``array`` with ``axes`` to ``(C, Y, X)``, dropping singleton t/z."""
    known = {"t", "c", "z", "y", "x"}
    if not set(axes) <= known or len(set(axes)) != len(axes):
        raise AxesError(
            f"{path} has axes {axes}; expected a subset of t, c, z, y, x "
            "with y and x present."
        )
    if "y" not in axes or "x" not in axes:
        raise AxesError(f"{path} has axes {axes}; y and x are required.")
    index: list[Any] = []
    for name, size in zip(axes, array.shape):
        if name in ("t", "z"):
            if size != 1:
                raise AxesError(
                    f"{path} has {size} planes along {name!r}; tiled_seg "
                    f"segments 2D slides. Select one {name} plane first."
                )
            index.append(0)
        else:
            index.append(slice(None))
    array = array[tuple(index)]
    kept = [a for a in axes if a not in ("t", "z")]
    if "c" not in kept:
        array = array[None]
        kept = ["c"] + kept
    return array.transpose([kept.index(a) for a in ("c", "y", "x")])


def _unit_to_um(unit: str | None) -> float | None:
    factors = {
        "micrometer": 1.0,
        "micron": 1.0,
        "um": 1.0,
        "µm": 1.0,
        "nanometer": 1e-3,
        "nm": 1e-3,
        "millimeter": 1e3,
        "mm": 1e3,
    }
    if unit is None:
        return None
    return factors.get(unit)


def open_slide(path: str | Path, pixel_size_um: float | None = None) -> Slide:
    """Open the multiscale image of an OME-NGFF store as a lazy array.

    Parameters
    ----------
    path : str or Path
        Store path or URL. A bioformats2raw layout (image in group ``0``) is
        followed.
    pixel_size_um : float, optional
        Full-resolution pixel size in um; overrides the store's metadata.

    Returns
    -------
    Slide
        Lazy ``(C, Y, X)`` levels, channel names and pixel size.

    Raises
    ------
    InputNotFoundError, NotNGFFError, AxesError, ChannelError
    """
    path = str(path)
    group = open_group(path)
    attrs, version = ome_attrs(group)
    if "multiscales" not in attrs and "0" in group and isinstance(group["0"], zarr.Group):
        return open_slide(f"{path.rstrip('/')}/0", pixel_size_um)
    if "multiscales" not in attrs:
        raise NotNGFFError(
            f"{path} is a zarr group without OME-NGFF 'multiscales' metadata; "
            "convert the image with `tiled-seg convert IN OUT.ome.zarr`."
        )
    multiscale = attrs["multiscales"][0]
    axes = _axis_names(multiscale.get("axes", ["c", "y", "x"][-group[multiscale["datasets"][0]["path"]].ndim :]))
    levels = []
    factors = []
    base_scale: dict[str, float] | None = None
    source = group[multiscale["datasets"][0]["path"]]
    for dataset in multiscale["datasets"]:
        array = da.from_zarr(group[dataset["path"]])
        if array.ndim != len(axes):
            raise AxesError(
                f"{path}/{dataset['path']} has {array.ndim} dimensions but the "
                f"metadata names {len(axes)} axes {axes}."
            )
        levels.append(_to_cyx(array, axes, path))
        scale = _scale_of(dataset, axes)
        if base_scale is None:
            base_scale = scale
        factors.append(scale["x"] / base_scale["x"] if base_scale["x"] else 1.0)
    if base_scale is None:
        raise NotNGFFError(f"{path} names no datasets in its multiscales metadata; write the image again.")
    if pixel_size_um is None:
        unit = None
        for axis in multiscale.get("axes", []):
            if isinstance(axis, dict) and axis.get("name") == "x":
                unit = axis.get("unit")
        to_um = _unit_to_um(unit)
        if to_um is not None:
            pixel_size_um = base_scale["x"] * to_um
    check_pixel_size_um(pixel_size_um, path)
    n_channels = int(levels[0].shape[0])
    channels = attrs.get("omero", {}).get("channels", [])
    names = [str(c.get("label", "")) for c in channels]
    if len(names) != n_channels or not all(names):
        names = [f"channel_{i}" for i in range(n_channels)]
        warnings.warn(
            f"{path} does not name all of its {n_channels} channels; using "
            f"channel_0..channel_{n_channels - 1}. Name them in the omero metadata "
            "(or `tiled-seg convert --channel-names`) to use them in a panel.",
            UserWarning,
            stacklevel=2,
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ChannelError(
            f"{path} names channels {duplicates} more than once; channel names "
            "must be unique. Rename them in the omero metadata."
        )
    return Slide(
        path=path,
        levels=tuple(levels),
        channel_names=tuple(names),
        pixel_size_um=pixel_size_um,
        ngff_version=version,
        level_factors=tuple(factors),
        source=source,
        axes=tuple(axes),
        level_sources=tuple(group[d["path"]] for d in multiscale["datasets"]),
    )


def pyramid_shapes(shape_yx: tuple[int, int], chunk_px: int) -> list[tuple[int, int]]:
    """Shapes of the pyramid levels (factor 2) down to ``MIN_LEVEL_SIDE_PX``.

    >>> pyramid_shapes((1000, 600), 256)
    [(1000, 600), (500, 300)]
    """
    shapes = [tuple(shape_yx)]
    floor = max(MIN_LEVEL_SIDE_PX, chunk_px)
    while min(shapes[-1]) >= 2 * floor:
        y, x = shapes[-1]
        shapes.append((math.ceil(y / 2), math.ceil(x / 2)))
    return [(int(y), int(x)) for y, x in shapes]


def _create_group(path: str, version: NGFFVersion, overwrite: bool) -> zarr.Group:
    if exists(path):
        if not overwrite:
            raise OutputExistsError(
                f"{path} exists; choose another output or pass --overwrite."
            )
        remove_tree(path)
    return zarr.open_group(path, mode="w", zarr_format=3 if version == "0.5" else 2)


#: Downsampling of each kind of pyramid, recorded as the multiscales ``type``
#: and ``metadata``. Both sample level k at full-resolution pixels
#: ``(2^k i, 2^k j)``, so an image pixel and its label pixel coincide at every
#: level and no translation is needed.
DOWNSAMPLING = {
    "image": (
        "triangle",
        "(1/4, 1/2, 1/4) filter in y and x, then every other pixel: an "
        "anti-aliased level centred on the pixels the label levels keep",
    ),
    "labels": ("nearest", "every other pixel in y and x: no label id is invented"),
}


def _multiscales(
    name: str, axes: list[str], pixel_size_um: float | None, n_levels: int, version: str,
    kind: Literal["image", "labels"] = "image",
) -> dict[str, Any]:
    unit_axes = []
    for a in axes:
        entry: dict[str, str] = {"name": a, "type": "channel" if a == "c" else "space"}
        if a != "c" and pixel_size_um is not None:
            entry["unit"] = "micrometer"
        unit_axes.append(entry)
    size = pixel_size_um if pixel_size_um is not None else 1.0
    datasets = []
    for level in range(n_levels):
        scale = [1.0 if a == "c" else size * 2**level for a in axes]
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    method, description = DOWNSAMPLING[kind]
    multiscale: dict[str, Any] = {
        "name": name, "axes": unit_axes, "datasets": datasets, "type": method,
        "metadata": {"description": description, "method": "tiled_seg.io.ngff",
                     "version": __version__},
    }
    if version == "0.4":
        multiscale["version"] = "0.4"
    return multiscale


def _set_ome(group: zarr.Group, content: Mapping[str, Any], version: str) -> None:
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", **content}
    else:
        group.attrs.update(content)


def _triangle_block(block: np.ndarray) -> np.ndarray:
    smoothed = block.astype(np.float64)
    for axis in (1, 2):
        smoothed = ndimage.correlate1d(smoothed, [0.25, 0.5, 0.25], axis=axis, mode="nearest")
    return smoothed


def _downsample_image(level: da.Array) -> da.Array:
    """Halve y and x of a ``(C, Y, X)`` array on the label pyramid's grid, keeping the dtype.

    A (1/4, 1/2, 1/4) filter then every other pixel: level pixel ``i`` is
    centred on input pixel ``2 i``, the pixel :func:`_downsample_nearest`
    keeps, and a linear ramp keeps its values.
    """
    smoothed = level.map_overlap(
        _triangle_block, depth={0: 0, 1: 1, 2: 1}, boundary="nearest", dtype=np.float64
    )[:, ::2, ::2]
    if np.issubdtype(level.dtype, np.integer):
        smoothed = da.round(smoothed)
    return smoothed.astype(level.dtype)


def _chunk_aligned(array: da.Array, chunk_px: int) -> bool:
    """Whether every dask block of ``array`` covers whole zarr chunks of ``chunk_px``.

    Such blocks can be stored in parallel without a rechunk (each task writes
    its own chunks).

    >>> _chunk_aligned(da.zeros((10, 6), chunks=(4, 6)), 2)
    True
    >>> _chunk_aligned(da.zeros((10, 6), chunks=(3, 6)), 2)
    False
    """
    return all(
        all(size % chunk_px == 0 for size in sizes[:-1]) for sizes in array.chunks
    )


def _downsample_nearest(level: da.Array) -> da.Array:
    """Halve y and x by taking every other pixel: no label id is invented."""
    return level[..., ::2, ::2]


def write_image(
    path: str | Path,
    data: np.ndarray | da.Array,
    channel_names: Sequence[str],
    pixel_size_um: float | None,
    *,
    chunk_px: int = DEFAULT_CHUNK_PX,
    ngff_version: NGFFVersion = "0.5",
    overwrite: bool = False,
    name: str = "image",
    channel_metadata: Sequence[Mapping[str, Any]] | None = None,
) -> zarr.Group:
    """Write a ``(C, Y, X)`` image as an OME-NGFF multiscale with a pyramid.

    Parameters
    ----------
    path : str or Path
        Output store; must not exist unless ``overwrite``.
    data : ndarray or dask array, shape (C, Y, X)
        Pixel values; a dask array is written block by block (bounded memory).
    channel_names : sequence of str
        One unique name per channel, stored in ``omero`` metadata.
    pixel_size_um : float or None
        Full-resolution pixel size in um.
    chunk_px : int
        Chunk side in y and x (px); channels are chunked one by one.
    ngff_version : {"0.5", "0.4"}
        0.5 writes zarr v3, 0.4 writes zarr v2.
    overwrite : bool
        Replace an existing store at ``path``.
    name : str
        Name of the multiscale image.
    channel_metadata : sequence of mapping, optional
        Extra keys for each channel's ``omero`` record (e.g. an IMC metal
        tag); one mapping per channel.

    Returns
    -------
    zarr.Group
        The written image group.
    """
    path = str(path)
    if data.ndim != 3:
        raise AxesError(f"image data must be (C, Y, X); got shape {data.shape}.")
    names = [str(n) for n in channel_names]
    if len(names) != data.shape[0]:
        raise ChannelError(
            f"{len(names)} channel names given for {data.shape[0]} channels; "
            "give exactly one name per channel."
        )
    if len(set(names)) != len(names):
        raise ChannelError(f"channel names must be unique; got {names}.")
    check_pixel_size_um(pixel_size_um, path)
    extra = list(channel_metadata) if channel_metadata is not None else [{}] * len(names)
    if len(extra) != len(names):
        raise ChannelError(
            f"{len(extra)} channel metadata records given for {len(names)} "
            "channels; give one record per channel."
        )
    group = _create_group(path, ngff_version, overwrite)
    level = da.asarray(data).rechunk((1, chunk_px, chunk_px))
    shapes = pyramid_shapes(level.shape[1:], chunk_px)
    # Display windows from the finest level small enough to read whole.
    sample_index = next((i for i, (y, x) in enumerate(shapes) if y * x <= WINDOW_SAMPLE_PX),
                        len(shapes) - 1)
    for index in range(len(shapes)):
        if index:
            level = _downsample_image(level).rechunk((1, chunk_px, chunk_px))
        target = group.create_array(
            str(index), shape=level.shape, chunks=(1, chunk_px, chunk_px), dtype=level.dtype,
            fill_value=0, **_dimension_kwargs(["c", "y", "x"], ngff_version),
        )
        da.store(level, target, lock=False)
        level = da.from_zarr(target)
        if index == sample_index:
            sample = level
    omero = {
        "channels": _omero_channels(names, extra, sample),
        "rdefs": {"model": "color", "defaultZ": 0, "defaultT": 0},
    }
    if ngff_version == "0.4":
        omero["version"] = "0.4"
    content = {
        "multiscales": [_multiscales(name, ["c", "y", "x"], pixel_size_um, len(shapes), ngff_version)],
        "omero": omero,
    }
    _set_ome(group, content, ngff_version)
    return group


#: Distinct channel colours (hex RGB), cycled when there are more channels.
CHANNEL_COLOURS = (
    "0000FF", "00FF00", "FF0000", "FFFF00", "FF00FF", "00FFFF", "FF8000", "8000FF",
    "00FF80", "FF0080", "80FF00", "0080FF", "FFFFFF",
)

#: Channels shown when a viewer opens the image; the rest are listed, off.
ACTIVE_CHANNELS = 3

#: Largest pyramid level (y x px) the display windows are computed on; finer
#: levels are skipped, coarser ones are smoothed (their tails are shorter).
WINDOW_SAMPLE_PX = 4_000_000

#: Percentiles of the display window ``start`` and ``end``.
WINDOW_PERCENTILES = (0.1, 99.9)


def display_windows(sample: np.ndarray | da.Array) -> list[dict[str, float]]:
    """``omero`` display windows of each channel of a ``(C, Y, X)`` sample, read one channel at a time.

    ``start`` and ``end`` are the 0.1th and 99.9th percentiles (the contrast
    a viewer opens with), ``min`` and ``max`` the sample's range.

    >>> display_windows(np.arange(2000.0).reshape(1, 40, 50))[0]["end"]
    1997.001
    """
    windows = []
    for index in range(sample.shape[0]):
        channel = np.asarray(sample[index], dtype=np.float64)
        low, high = np.percentile(channel, WINDOW_PERCENTILES)
        # A constant channel still needs a window a viewer can draw.
        end = float(high) if high > low else float(low) + 1.0
        windows.append({"start": round(float(low), 3), "end": round(end, 3),
                        "min": float(channel.min()), "max": max(float(channel.max()), end)})
    return windows


def _omero_channels(
    names: list[str], extra: list[Mapping[str, Any]], sample: da.Array
) -> list[dict[str, Any]]:
    """``omero`` channel records: windows from a ``(C, Y, X)`` sample level, distinct colours, a few active."""
    windows = display_windows(sample)
    return [
        {
            **more,
            "label": n,
            "color": CHANNEL_COLOURS[i % len(CHANNEL_COLOURS)],
            "active": i < ACTIVE_CHANNELS,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": window,
        }
        for i, (n, more, window) in enumerate(zip(names, extra, windows))
    ]


def _dimension_kwargs(axes: list[str], version: str) -> dict[str, Any]:
    return {"dimension_names": axes} if version == "0.5" else {"chunk_key_encoding": {"name": "v2", "separator": "/"}}


def _image_version(store: str) -> NGFFVersion:
    _, version = ome_attrs(open_group(store))
    return "0.4" if version == "0.4" else "0.5"


def list_labels(store: str | Path) -> list[str]:
    """Names of the label images in ``store/labels`` (empty when none)."""
    group = open_group(store)
    if "labels" not in group:
        return []
    attrs, _ = ome_attrs(group["labels"])
    return [str(n) for n in attrs.get("labels", [])]


def _label_block_px(chunk_px: int) -> int:
    """Side (px) of the blocks label levels are written in: about ``BLOCK_PX``, whole chunks."""
    return max(BLOCK_PX // chunk_px, 1) * chunk_px


def write_labels(
    store: str | Path,
    name: str,
    labels: np.ndarray | da.Array,
    pixel_size_um: float | None,
    *,
    chunk_px: int = DEFAULT_CHUNK_PX,
    overwrite: bool = False,
    properties: Sequence[dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> zarr.Group:
    """Write a ``(Y, X)`` label image to ``store/labels/name`` with a pyramid.

    Levels are downsampled by taking every other pixel, so no id is invented.
    The NGFF version follows the image in ``store``.

    Parameters
    ----------
    store : str or Path
        An OME-NGFF image store.
    name : str
        Label image name, e.g. ``"cells"``.
    labels : ndarray or dask array, shape (Y, X)
        Integer labels, 0 for background. A dask array is written block by
        block; its graph is computed here.
    pixel_size_um : float or None
        Full-resolution pixel size in um.
    chunk_px : int
        Chunk side (px).
    overwrite : bool
        Replace an existing label image of that name.
    properties : sequence of dict, optional
        NGFF ``image-label`` ``properties`` records (one per label id).
    progress : callable, optional
        ``progress("write <name>", done, total)`` as full-resolution blocks
        are written, then ``progress("pyramid <name>", ...)`` for the coarser levels.
    """
    groups = write_label_images(
        store, {name: labels}, pixel_size_um, chunk_px=chunk_px, overwrite=overwrite,
        properties={name: properties} if properties else None, progress=progress,
    )
    return groups[name]


def write_label_images(
    store: str | Path,
    images: Mapping[str, np.ndarray | da.Array],
    pixel_size_um: float | None,
    *,
    chunk_px: int = DEFAULT_CHUNK_PX,
    overwrite: bool = False,
    properties: Mapping[str, Sequence[dict[str, Any]]] | None = None,
    progress: Progress | None = None,
    pyramid: bool = True,
) -> dict[str, zarr.Group]:
    """Write several ``(Y, X)`` label images of one slide, each as :func:`write_labels` does.

    Every level of all images is stored in one computation, so the blocks of
    all images share the workers; one image at a time would leave workers
    idle at every level with fewer blocks than workers.

    Parameters
    ----------
    images : mapping of str to ndarray or dask array
        Label image by name, all of the same shape.
    properties : mapping of str to sequence of dict, optional
        ``image-label`` ``properties`` records by image name.
    progress : callable, optional
        ``progress("write <names>", done, total)`` as full-resolution blocks
        are written, then ``progress("pyramid <names>", ...)`` for the
        coarser levels (names joined by ``+``).
    pyramid : bool
        Also write the coarser levels now. With False only the full
        resolution is written, with the coarser levels whose chunks its
        blocks cover whole (the metadata already lists every level): call
        :func:`write_label_pyramids` before the store is used by anyone else.

    Other parameters are those of :func:`write_labels`.

    Returns
    -------
    dict of str to zarr.Group
        The written label groups by name.
    """
    store = str(store)
    for labels in images.values():
        if labels.ndim != 2:
            raise AxesError(f"labels must be (Y, X); got shape {labels.shape}.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputFormatError(f"labels must have an integer dtype, got {labels.dtype}; pass a label image (0 background, positive ids).")
    version = _image_version(store)
    root = zarr.open_group(store, mode="a")
    labels_group = root.require_group("labels")
    existing = list_labels(store)
    taken = [name for name in images if name in labels_group]
    if taken and not overwrite:
        raise OutputExistsError(
            f"{store}/labels/{taken[0]} exists; pass --overwrite to replace it."
        )
    block_px = _label_block_px(chunk_px)
    groups, writes = {}, []
    for name, labels in images.items():
        level = da.asarray(labels)
        if not _chunk_aligned(level, chunk_px):
            level = level.rechunk((block_px, block_px))
        if name in labels_group:
            del labels_group[name]
        groups[name] = labels_group.create_group(name)
        shapes = pyramid_shapes(level.shape, chunk_px)
        # Coarser levels whose chunks the blocks cover whole are written from
        # the same blocks (every 2**k-th pixel), not read back afterwards.
        steps = [1, *itertools.takewhile(lambda step: _chunk_aligned(level, chunk_px * step),
                                         (2**k for k in range(1, len(shapes))))]
        targets = [
            (groups[name].create_array(
                str(index), shape=shapes[index], chunks=(chunk_px, chunk_px), dtype=level.dtype,
                fill_value=0, **_dimension_kwargs(["y", "x"], version),
            ), step)
            for index, step in enumerate(steps)
        ]
        writes.append((level, targets))
    store_blocks(writes, f"write {'+'.join(images)}", progress)
    for name, group in groups.items():
        # The image is always in the same store (a separate output links it, see link_image).
        image_label: dict[str, Any] = {"source": {"image": "../../"}}
        if properties and properties.get(name):
            image_label["properties"] = list(properties[name])
        if version == "0.4":
            image_label["version"] = "0.4"
        n_levels = len(pyramid_shapes(group["0"].shape, chunk_px))
        content = {
            "multiscales": [_multiscales(name, ["y", "x"], pixel_size_um, n_levels, version, kind="labels")],
            "image-label": image_label,
        }
        _set_ome(group, content, version)
    _set_ome(labels_group, {"labels": sorted(set(existing) | set(images))}, version)
    if pyramid:
        write_label_pyramids(store, list(images), chunk_px=chunk_px, progress=progress)
    return groups


def _levels_present(group: zarr.Group, n_levels: int) -> int:
    """How many levels ``0, 1, ...`` of a multiscale ``group`` exist, counted up to the first missing one."""
    present = 0
    while present < n_levels and str(present) in group:
        present += 1
    return present


def write_label_pyramids(
    store: str | Path, names: Sequence[str], *, chunk_px: int = DEFAULT_CHUNK_PX,
    progress: Progress | None = None,
) -> None:
    """Write the coarser levels of label images whose full resolution is written.

    For :func:`write_label_images` with ``pyramid=False``: each missing level
    takes every other pixel of the one above, all images level by level
    together, from the coarsest level written already. A run calls it on a
    thread while it measures, which reads only the full resolution.

    Parameters
    ----------
    store : str or Path
        The OME-NGFF store.
    names : sequence of str
        Label images under ``labels/``.
    chunk_px : int
        Chunk side (px), as their full resolution was written.
    progress : callable, optional
        ``progress("pyramid <names>", done, total)`` as blocks are written.
    """
    store = str(store)
    version = _image_version(store)
    groups = {name: zarr.open_group(f"{store}/labels/{name}", mode="a") for name in names}
    block_px = _label_block_px(chunk_px)
    shapes = {name: pyramid_shapes(group["0"].shape, chunk_px) for name, group in groups.items()}
    written = {name: _levels_present(group, len(shapes[name])) for name, group in groups.items()}
    # Blocks of 2 x (whole chunks) halve into whole chunks: no rechunk, no
    # transfers, and about one task per block, not per chunk.
    levels = {
        name: da.from_zarr(group[str(written[name] - 1)], chunks=(2 * block_px, 2 * block_px))
        for name, group in groups.items()
    }
    total = sum(
        len(plan_blocks(shape, (chunk_px, chunk_px), block_px))
        for name in names for shape in shapes[name][written[name]:]
    )
    stage, done = f"pyramid {'+'.join(names)}", 0
    for index in range(1, max(len(s) for s in shapes.values())):
        targets = {}
        for name in names:
            if index >= len(shapes[name]) or index < written[name]:
                continue
            levels[name] = _downsample_nearest(levels[name])
            targets[name] = groups[name].create_array(
                str(index), shape=levels[name].shape, chunks=(chunk_px, chunk_px),
                dtype=levels[name].dtype, fill_value=0, overwrite=True,
                **_dimension_kwargs(["y", "x"], version),
            )
        done = store_blocks([(levels[n], [(t, 1)]) for n, t in targets.items()], stage, progress, done, total)
        for name, target in targets.items():
            levels[name] = da.from_zarr(target, chunks=(2 * block_px, 2 * block_px))


def link_image(image: str | Path, store: str | Path) -> None:
    """Make the zarr group ``store`` an image store of the multiscale image ``image``.

    ``store`` gets the image's NGFF metadata (``multiscales``, ``omero``) and
    its pyramid levels: symbolic links to the input's level arrays when both
    are local paths (no copy; the input is never written through them), a
    chunk-by-chunk copy when either is a URL. Readers then find the image and
    its labels in the one store, as NGFF requires of a ``labels`` group.

    Parameters
    ----------
    image : str or Path
        The input image group (the one holding ``multiscales``).
    store : str or Path
        An empty zarr group of the same zarr format.
    """
    image, store = str(image).rstrip("/"), str(store).rstrip("/")
    source = open_group(image)
    attrs, version = ome_attrs(source)
    target = zarr.open_group(store, mode="a")
    paths = [d["path"] for d in attrs["multiscales"][0]["datasets"]]
    for path in paths:
        if is_url(image) or is_url(store):
            level = source[path]
            names = attrs["multiscales"][0].get("axes", [])
            copy = target.create_array(
                path, shape=level.shape, chunks=level.chunks, dtype=level.dtype,
                fill_value=level.fill_value,
                **_dimension_kwargs(_axis_names(names), "0.4" if version == "0.4" else "0.5"),
            )
            da.store(da.from_zarr(level), copy, lock=False)
        else:
            os.symlink(Path(image, path).resolve(), Path(store, path), target_is_directory=True)
    kept: dict[str, Any] = {k: attrs[k] for k in ("multiscales", "omero") if k in attrs}
    _set_ome(target, kept, "0.4" if version == "0.4" else "0.5")


def find_unreadable_block(array: da.Array) -> tuple[tuple[int, int], ...] | None:
    """Index ranges ``(start, stop)`` per axis of the first block of ``array`` that fails to load.

    Used after a read failed, to name the damaged chunk; loads the blocks one
    by one (synchronously), so call it on a region, not on a whole slide.
    Returns None when every block loads.

    >>> find_unreadable_block(da.zeros((4, 4), chunks=2)) is None
    True
    """
    edges = [np.cumsum((0, *sizes)) for sizes in array.chunks]
    for index in np.ndindex(*array.numblocks):
        try:
            array.blocks[index].compute(scheduler="synchronous")
        except Exception:  # any failure to load marks the block; the caller keeps the cause
            return tuple((int(e[i]), int(e[i + 1])) for e, i in zip(edges, index))
    return None


def label_array(store: str | Path, name: str, level: int = 0) -> zarr.Array:
    """The zarr array of ``store/labels/name`` at pyramid ``level``, for direct reads."""
    store = str(store)
    if name not in list_labels(store):
        raise InputNotFoundError(
            f"{store} has no label image {name!r}; present: "
            f"{', '.join(list_labels(store)) or 'none'}. Run `tiled-seg run` first."
        )
    return open_group(store)[f"labels/{name}/{level}"]


def read_labels(store: str | Path, name: str, level: int = 0, block_px: int | None = None) -> da.Array:
    """Lazy ``(Y, X)`` label array ``store/labels/name`` at pyramid ``level``.

    With ``block_px``, each dask block is about ``block_px`` of whole zarr
    chunks, read with one zarr call (one task per block, not per chunk).
    """
    array = label_array(store, name, level)
    if block_px is None:
        return da.from_zarr(array)
    return da.from_zarr(array, chunks=tuple(max(block_px // c, 1) * c for c in array.chunks))
