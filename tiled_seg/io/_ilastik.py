"""Read ilastik pixel probability exports (HDF5 or TIFF) as probabilities in 0-1.

ilastik exports probabilities as HDF5 (dataset ``exported_data``, axes in its
``axistags`` attribute, usually ``yxc``; uint8 0-255 or float32 0-1);
steinbock's ilastik step writes TIFF (``cyx`` or ``yxc``, uint16 scaled to
0-65535). Either becomes float32 probabilities, one channel per class,
named nucleus, cytoplasm, background when there are three (steinbock's
order).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from tiled_seg.errors import AxesError, DependencyError, InputFormatError
from tiled_seg.io._source import SourceImage
from tiled_seg.io._tiff import open_tiff

__all__ = ["PROBABILITY_CHANNELS", "as_probabilities", "open_ilastik_h5", "open_probability_tiff"]

#: Channel names of a three-class export, in steinbock's class order.
PROBABILITY_CHANNELS: tuple[str, ...] = ("nucleus", "cytoplasm", "background")
_DATASET = "exported_data"


def as_probabilities(image: SourceImage) -> SourceImage:
    """``image`` as float32 probabilities: integers divided by their dtype's maximum.

    >>> img = SourceImage(da.from_array(np.full((3, 2, 2), 255, np.uint8)), None, None, "p")
    >>> out = as_probabilities(img)
    >>> out.channel_names, float(out.data.max().compute())
    (('nucleus', 'cytoplasm', 'background'), 1.0)
    """
    data = image.data
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / np.float32(np.iinfo(data.dtype).max)
    else:
        data = data.astype(np.float32)
    names = PROBABILITY_CHANNELS if data.shape[0] == len(PROBABILITY_CHANNELS) else None
    return SourceImage(data=data, channel_names=names, pixel_size_um=image.pixel_size_um,
                       name=image.name)


def _axes(dataset: Any, path: Path) -> str:
    """Axis letters of an ilastik dataset, from ``axistags`` or ilastik's default ``yxc``."""
    tags = dataset.attrs.get("axistags")
    if tags is None:
        default = {2: "yx", 3: "yxc", 4: "zyxc", 5: "tzyxc"}
        if dataset.ndim not in default:
            raise AxesError(f"{path}: dataset of shape {dataset.shape} has no axistags; "
                            "export it from ilastik with axes yxc.")
        return default[dataset.ndim]
    if isinstance(tags, bytes):
        tags = tags.decode()
    return "".join(axis["key"] for axis in json.loads(tags)["axes"]).lower()


def _to_cyx(array: da.Array, axes: str, path: Path) -> da.Array:
    for axis in "tz":
        if axis in axes:
            if array.shape[axes.index(axis)] != 1:
                raise AxesError(f"{path} holds several {axis} planes (axes {axes}, shape "
                                f"{array.shape}); export one 2D image per file.")
            array = array.squeeze(axis=axes.index(axis))
            axes = axes.replace(axis, "")
    if "c" not in axes:
        array, axes = array[None], "c" + axes
    if sorted(axes) != ["c", "x", "y"]:
        raise AxesError(f"{path} has axes {axes!r}; an ilastik export has y, x and c.")
    return array.transpose([axes.index(a) for a in "cyx"])


@contextmanager
def open_ilastik_h5(path: Path) -> Iterator[SourceImage]:
    """Open an ilastik HDF5 export lazily as probabilities; the file stays open inside.

    Raises
    ------
    DependencyError
        h5py is not installed.
    InputFormatError
        Not an HDF5 file, or no ``exported_data`` dataset (and not exactly one dataset).
    AxesError
        Axes other than y, x, c (and single t / z planes).
    """
    try:
        import h5py
    except ImportError as error:
        raise DependencyError(
            "reading ilastik HDF5 exports needs h5py; install it with "
            "`pip install 'tiled-seg[pixels]'`."
        ) from error
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputFormatError(f"{path} is not a readable HDF5 file ({error}).") from error
    with handle:
        datasets: list[str] = []
        handle.visititems(lambda name, item: datasets.append(name)
                          if isinstance(item, h5py.Dataset) else None)
        name = _DATASET if _DATASET in handle else (datasets[0] if len(datasets) == 1 else None)
        if name is None:
            raise InputFormatError(
                f"{path} has no dataset {_DATASET!r} (datasets: {', '.join(datasets) or 'none'}); "
                "export the probabilities from ilastik's Export Data applet."
            )
        dataset = handle[name]
        data = _to_cyx(da.from_array(dataset, chunks=dataset.chunks or "auto"),
                       _axes(dataset, path), path)
        yield as_probabilities(SourceImage(data=data, channel_names=None, pixel_size_um=None,
                                           name=path.name))


@contextmanager
def open_probability_tiff(path: Path) -> Iterator[SourceImage]:
    """Open a TIFF probability export (``cyx``, or ``yxc`` samples) as probabilities."""
    with open_tiff(path) as image:
        yield as_probabilities(image)
