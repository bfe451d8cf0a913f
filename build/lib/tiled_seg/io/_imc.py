"""Read IMC acquisitions (``.mcd`` and ``.txt``) through readimc.

Channel names are the panel's target names, made readable and unique by
:func:`imc_channel_names`; the metal tag (e.g. ``Pr141``) and readimc's full
label are kept per channel in the ``omero`` metadata. An acquisition is read
whole (readimc has no partial read of ``.txt``), one at a time: IMC
acquisitions are small (about 10^3 px on a side).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from tiled_seg.errors import InputFormatError
from tiled_seg.io._source import SourceImage

__all__ = ["imc_channel_names", "read_imc_txt", "open_mcd", "mcd_store_name"]

#: Pixel size (um) of IMC when the file does not say: one laser shot per um.
IMC_PIXEL_SIZE_UM = 1.0

_CLONE = re.compile(r"\(\(.*?\)\)")


def imc_channel_names(labels: Sequence[str], metal_tags: Sequence[str]) -> list[str]:
    """Readable, unique channel names from IMC panel labels.

    The metal tag (``Pr141`` or ``141Pr``) at the end of a label and clone or
    lot numbers in double parentheses are dropped; a channel without a target
    is named by its metal tag; names that still repeat get ``_<metal tag>``.

    Parameters
    ----------
    labels : sequence of str
        Channel labels as readimc gives them, e.g. ``Cytoker_651((3356))Pr141``.
    metal_tags : sequence of str
        Metal tags, e.g. ``Pr141``, one per label.

    Returns
    -------
    list of str

    Examples
    --------
    >>> imc_channel_names(["Cytoker_651((3356))Pr141", "107Ag", "CD3", "CD3"],
    ...                   ["Pr141", "Ag107", "Er170", "Er168"])
    ['Cytoker_651', 'Ag107', 'CD3_Er170', 'CD3_Er168']
    """
    names = []
    for label, tag in zip(labels, metal_tags):
        name = str(label).strip()
        match = re.fullmatch(r"([A-Za-z]+)(\d+)", tag)
        if match:
            metal, mass = match.groups()
            for suffix in (f"{metal}{mass}", f"{mass}{metal}"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
        name = _CLONE.sub("", name).strip(" _-")
        names.append(name or tag)
    return [f"{n}_{t}" if names.count(n) > 1 else n for n, t in zip(names, metal_tags)]


def _source(image: np.ndarray, labels: Sequence[str], tags: Sequence[str],
            pixel_size_um: float, name: str) -> SourceImage:
    metadata = tuple(
        {"metal_tag": str(t), "imc_label": str(label)} for label, t in zip(labels, tags)
    )
    return SourceImage(
        data=da.from_array(image, chunks=(1, *image.shape[1:])),
        channel_names=tuple(imc_channel_names(labels, tags)),
        pixel_size_um=pixel_size_um,
        name=name,
        channel_metadata=metadata,
    )


def _readimc() -> Any:
    try:
        import readimc
    except ImportError as error:
        raise InputFormatError(
            "reading IMC files needs readimc; install it with "
            "`pip install 'tiled-seg[imc]'`."
        ) from error
    return readimc


def read_imc_txt(path: Path) -> SourceImage:
    """Read an IMC ``.txt`` export as one ``(C, Y, X)`` float32 image.

    Raises
    ------
    InputFormatError
        The file is not an IMC text export readimc can parse.
    """
    readimc = _readimc()
    try:
        with readimc.TXTFile(path) as txt:
            image = txt.read_acquisition()
            labels, tags = list(txt.channel_labels), list(txt.channel_names)
    except (OSError, ValueError, KeyError) as error:
        raise InputFormatError(
            f"{path} is not a readable IMC .txt export ({error}); give the "
            "acquisition's .txt or its .mcd file."
        ) from error
    return _source(image, labels, tags, IMC_PIXEL_SIZE_UM, path.stem)


def mcd_store_name(mcd_path: Path, acquisition_id: int) -> str:
    """Store name of one acquisition: ``<mcd stem>_<id, 3 digits>.ome.zarr``.

    >>> mcd_store_name(Path("slide1.mcd"), 2)
    'slide1_002.ome.zarr'
    """
    return f"{mcd_path.stem}_{acquisition_id:03d}.ome.zarr"


@contextmanager
def open_mcd(path: Path) -> Iterator[Iterator[tuple[str, SourceImage]]]:
    """Open an ``.mcd`` file; yield an iterator of ``(store name, image)``.

    Acquisitions of all slides are read one by one, in file order. The pixel
    size is the acquisition's ablation distance between shots where the file
    records it, else 1.0 um.

    Raises
    ------
    InputFormatError
        The file cannot be read, or it holds no acquisition.
    """
    readimc = _readimc()
    try:
        mcd = readimc.MCDFile(path)
        mcd.open()
    except (OSError, ValueError) as error:
        raise InputFormatError(
            f"{path} is not a readable .mcd file ({error}); export the "
            "acquisitions as .txt and convert those."
        ) from error
    try:
        acquisitions = [a for slide in mcd.slides for a in slide.acquisitions]
        if not acquisitions:
            raise InputFormatError(f"{path} holds no acquisition; nothing to convert.")
        yield _read_acquisitions(mcd, acquisitions, path)
    finally:
        mcd.close()


def _read_acquisitions(mcd: Any, acquisitions: list[Any], path: Path) -> Iterator[tuple[str, SourceImage]]:
    for acquisition in acquisitions:
        try:
            image = mcd.read_acquisition(acquisition)
        except (OSError, ValueError) as error:
            raise InputFormatError(
                f"acquisition {acquisition.id} of {path} cannot be read ({error}); "
                "export it as .txt from the instrument software and convert that."
            ) from error
        name = mcd_store_name(path, acquisition.id)
        pixel_size_um = acquisition.pixel_size_x_um or IMC_PIXEL_SIZE_UM
        yield name, _source(
            image,
            list(acquisition.channel_labels),
            list(acquisition.channel_names),
            float(pixel_size_um),
            acquisition.description or name.removesuffix(".ome.zarr"),
        )
