"""Read OME-TIFF, MIBItiff and plain multi-page TIFF lazily as ``(C, Y, X)``.

Pixels are read through tifffile's zarr interface, so a large TIFF is never
loaded whole: each dask chunk reads one page (or one TIFF tile/strip group).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import tifffile
import zarr

from tiled_seg.errors import AxesError, InputFormatError
from tiled_seg.io._source import SourceImage
from tiled_seg.io.ngff import _unit_to_um

__all__ = ["open_tiff"]

#: tifffile axis letters that can never be a channel axis.
_PLANE_AXES = "TZ"


@contextmanager
def open_tiff(path: Path) -> Iterator[SourceImage]:
    """Open a TIFF as a lazy :class:`SourceImage`; the file stays open inside.

    Channel names and pixel size come from the OME-XML (OME-TIFF) or from the
    ``PageName`` tags and the JSON description (MIBItiff); a plain TIFF gives
    neither. Channels are the OME ``C`` axis, the pages, the first axis of a
    3D array, or the samples of an RGB image. Of an OME-TIFF with several
    images, the first is read.

    Raises
    ------
    InputFormatError
        The file is not a readable TIFF, or its pages differ in shape or dtype.
    AxesError
        More than one non-spatial axis, or several z / t planes.
    """
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError) as error:
        raise InputFormatError(
            f"{path} is not a readable TIFF ({error}); give an OME-TIFF, MIBItiff "
            "or multi-page TIFF."
        ) from error
    with tif:
        yield _read(tif, path)


def _read(tif: tifffile.TiffFile, path: Path) -> SourceImage:
    series = tif.series
    if not series or (len(series) > 1 and not tif.is_ome):
        layout = ", ".join(f"{s.shape} {s.dtype}" for s in series) or "no images"
        raise InputFormatError(
            f"{path} holds pages that do not form one channel stack ({layout}); "
            "every page must be one channel of the same (Y, X) shape and dtype. "
            "Re-save the channels as pages of one shape, e.g. with "
            "tifffile.imwrite(path, array_cyx)."
        )
    first = series[0]
    array = da.from_zarr(zarr.open(first.aszarr(level=0), mode="r"))
    data = _to_cyx(array, first.axes, path)
    names: tuple[str, ...] | None = None
    pixel_size_um: float | None = None
    if _is_mibi(tif):
        names = _mibi_names(tif)
        pixel_size_um = _mibi_pixel_size_um(tif, data.shape[2])
    elif tif.is_ome and tif.ome_metadata:
        names, pixel_size_um = _ome_metadata(tif.ome_metadata)
    if names is not None and len(names) != data.shape[0]:
        names = None
    return SourceImage(data=data, channel_names=names, pixel_size_um=pixel_size_um, name=path.name)


def _to_cyx(array: da.Array, axes: str, path: Path) -> da.Array:
    """Reorder tifffile ``axes`` to ``(C, Y, X)``, dropping singleton axes."""
    if "Y" not in axes or "X" not in axes:
        raise InputFormatError(f"{path} has axes {axes!r} without Y and X; it is not an image.")
    kept = [i for i, (a, n) in enumerate(zip(axes, array.shape)) if a in "YX" or n > 1]
    array = array[tuple(slice(None) if i in kept else 0 for i in range(array.ndim))]
    kept_axes = "".join(axes[i] for i in kept)
    others = [a for a in kept_axes if a not in "YX"]
    planes = [a for a in others if a in _PLANE_AXES]
    if planes:
        raise AxesError(
            f"{path} has several planes along {planes} (axes {axes!r}, shape "
            f"{tuple(int(n) for n in array.shape)}); tiled_seg segments 2D "
            "slides. Save one plane per file."
        )
    if len(others) > 1:
        raise AxesError(
            f"{path} has axes {kept_axes!r} with shape {tuple(int(n) for n in array.shape)}; "
            "expected one channel axis plus Y and X. Save it as (C, Y, X)."
        )
    if not others:
        array = array[None]
        kept_axes = "C" + kept_axes
    channel = next(a for a in kept_axes if a not in "YX")
    return array.transpose([kept_axes.index(a) for a in (channel, "Y", "X")])


def _description_json(page: Any) -> dict[str, Any]:
    try:
        value = json.loads(page.description)
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_mibi(tif: tifffile.TiffFile) -> bool:
    page = tif.pages.first
    if str(page.software or "").startswith("IonpathMIBI"):
        return True
    return any(key.startswith("mibi.") for key in _description_json(page))


def _mibi_names(tif: tifffile.TiffFile) -> tuple[str, ...] | None:
    names = []
    for page in tif.pages:
        tag = page.tags.get("PageName") if isinstance(page, tifffile.TiffPage) else None
        if tag is None:
            return None
        names.append(str(tag.value))
    return tuple(names)


def _mibi_pixel_size_um(tif: tifffile.TiffFile, width_px: int) -> float | None:
    # MIBI writes the square field of view's side in um as "mibi.size".
    fov_um = _description_json(tif.pages.first).get("mibi.size")
    if isinstance(fov_um, (int, float)) and fov_um > 0:
        return float(fov_um) / width_px
    return None


def _ome_metadata(xml: str) -> tuple[tuple[str, ...] | None, float | None]:
    """Channel names and x pixel size (um) of the first OME image."""
    image = tifffile.xml2dict(xml).get("OME", {}).get("Image", {})
    if isinstance(image, list):
        image = image[0]
    pixels = image.get("Pixels", {})
    channels = pixels.get("Channel", [])
    if isinstance(channels, dict):
        channels = [channels]
    names = [c.get("Name") for c in channels]
    pixel_size_um = None
    size = pixels.get("PhysicalSizeX")
    to_um = _unit_to_um(str(pixels.get("PhysicalSizeXUnit", "µm")))
    if size is not None and to_um is not None:
        pixel_size_um = float(size) * to_um
    if not names or not all(names):
        return None, pixel_size_um
    return tuple(str(n) for n in names), pixel_size_um
