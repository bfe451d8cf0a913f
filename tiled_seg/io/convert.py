"""Convert TIFF, OME-TIFF, MIBItiff and IMC files to OME-Zarr.

Output layout:

- ``.tif`` / ``.tiff`` / ``.ome.tif(f)`` and IMC ``.txt``: ``OUT`` is one
  OME-Zarr image store.
- IMC ``.mcd``: ``OUT`` is a plain directory holding one store per
  acquisition, ``OUT/<mcd stem>_<acquisition id, 3 digits>.ome.zarr`` (the
  steinbock naming), whatever the number of acquisitions.

Values and dtype are kept. Metadata found in the file (OME-XML, MIBI page
names and run description, IMC panel) is used unless ``channel_names`` or
``pixel_size_um`` are given, which take precedence. Everything is written to a
hidden sibling of ``OUT`` first and moved into place only when all of it
succeeded, so a failed conversion leaves nothing behind; the input is only
read.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dask

from tiled_seg.errors import (
    ChannelError,
    ConfigError,
    InputFormatError,
    InputNotFoundError,
    OutputExistsError,
)
from tiled_seg.io._imc import open_mcd, read_imc_txt
from tiled_seg.io._source import SourceImage
from tiled_seg.io._tiff import open_tiff
from tiled_seg.io.ngff import NGFFVersion, check_pixel_size_um, write_image
from tiled_seg.tiling import DEFAULT_CHUNK_PX

__all__ = ["convert", "SUPPORTED_SUFFIXES"]

#: Input suffixes (lower case) and the reader each one goes to.
SUPPORTED_SUFFIXES = {".tif": "tiff", ".tiff": "tiff", ".txt": "imc_txt", ".mcd": "mcd"}


def convert(
    input_path: str | Path,
    output_path: str | Path,
    *,
    pixel_size_um: float | None = None,
    channel_names: Sequence[str] | str | None = None,
    chunk_px: int = DEFAULT_CHUNK_PX,
    ngff_version: NGFFVersion = "0.5",
    overwrite: bool = False,
) -> list[str]:
    """Convert an image file to OME-Zarr with a pyramid.

    Parameters
    ----------
    input_path : str or Path
        An OME-TIFF, MIBItiff, (multi-page) TIFF, IMC ``.txt`` or ``.mcd`` file.
    output_path : str or Path
        The store to write (a directory of stores for ``.mcd``, see the
        module docstring).
    pixel_size_um : float, optional
        Pixel size in um; overrides the file's. Without it: OME-XML
        ``PhysicalSizeX``, the MIBI field of view / width, the IMC ablation
        distance or 1.0 um for IMC; a plain TIFF then has no pixel size.
    channel_names : sequence of str or str, optional
        One unique name per channel (a string is split at commas); overrides
        the file's. Without it:
        OME-XML names, MIBI ``PageName`` tags, IMC target names, else
        ``channel_<i>``.
    chunk_px : int
        Zarr chunk side in y and x (px).
    ngff_version : {"0.5", "0.4"}
        NGFF version to write (0.5: zarr v3, 0.4: zarr v2).
    overwrite : bool
        Replace ``output_path`` if it exists.

    Returns
    -------
    list of str
        Paths of the written image stores.

    Raises
    ------
    InputNotFoundError, InputFormatError, AxesError, ChannelError,
    PixelSizeError, ConfigError, OutputExistsError
    """
    source = Path(input_path)
    target = Path(output_path)
    if isinstance(channel_names, str):
        channel_names = channel_names.split(",")
    kind = _validate(source, target, pixel_size_um, chunk_px, ngff_version, overwrite)
    partial = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    written: list[str] = []
    try:
        # The readers hold open file handles that cannot travel to cluster
        # workers, and the file is local to this process anyway: convert with
        # local threads even when a distributed client is active.
        with dask.config.set(scheduler="threads"), _open_sources(source, kind) as images:
            for store_name, image in images:
                names = _channel_names(channel_names, image, source)
                size_um = pixel_size_um if pixel_size_um is not None else image.pixel_size_um
                check_pixel_size_um(size_um, str(source))
                if store_name is not None:
                    partial.mkdir(parents=True, exist_ok=True)
                write_image(
                    partial if store_name is None else partial / store_name,
                    image.data,
                    names,
                    size_um,
                    chunk_px=chunk_px,
                    ngff_version=ngff_version,
                    name=image.name,
                    channel_metadata=image.channel_metadata,
                )
                written.append(str(target if store_name is None else target / store_name))
        _move_into_place(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return written


def _validate(
    source: Path, target: Path, pixel_size_um: float | None, chunk_px: int,
    ngff_version: str, overwrite: bool,
) -> str:
    if not source.is_file():
        raise InputNotFoundError(
            f"{source} does not exist or is not a file; give the path of a "
            "TIFF, OME-TIFF, MIBItiff, IMC .txt or .mcd file."
        )
    kind = SUPPORTED_SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise InputFormatError(
            f"{source} has the unsupported extension {source.suffix!r}; supported: "
            f"{', '.join(sorted(SUPPORTED_SUFFIXES))}. Export the image as OME-TIFF."
        )
    if ngff_version not in ("0.4", "0.5"):
        raise ConfigError(f"NGFF version {ngff_version!r} is not supported; use '0.5' or '0.4'.")
    if isinstance(chunk_px, bool) or not isinstance(chunk_px, int) or chunk_px < 1:
        raise ConfigError(f"chunk size must be a positive number of px; got {chunk_px!r}.")
    check_pixel_size_um(pixel_size_um, "--pixel-size-um")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{target} exists; choose another output or pass --overwrite.")
    if target.resolve() == source.resolve():
        raise OutputExistsError(f"the output {target} is the input; choose another output path.")
    return kind


@contextmanager
def _open_sources(source: Path, kind: str) -> Iterator[Iterable[tuple[str | None, SourceImage]]]:
    """Yield ``(store name or None for OUT itself, image)`` pairs, read lazily."""
    if kind == "tiff":
        with open_tiff(source) as image:
            yield [(None, image)]
    elif kind == "imc_txt":
        yield [(None, read_imc_txt(source))]
    else:
        with open_mcd(source) as acquisitions:
            yield acquisitions


def _channel_names(given: Sequence[str] | None, image: SourceImage, source: Path) -> list[str]:
    count = int(image.data.shape[0])
    if given is not None:
        names = [str(n).strip() for n in given]
        if len(names) != count:
            raise ChannelError(
                f"{len(names)} channel names given for the {count} channels of "
                f"{source}; pass exactly {count} comma-separated names with "
                "--channel-names (or leave it out to use the file's names)."
            )
    elif image.channel_names is not None:
        names = list(image.channel_names)
    else:
        names = [f"channel_{i}" for i in range(count)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or not all(names):
        raise ChannelError(
            f"channel names of {source} must be unique and non-empty; got "
            f"{names}. Give unique names with --channel-names."
        )
    return names


def _move_into_place(partial: Path, target: Path) -> None:
    """Rename ``partial`` to ``target``, replacing an existing ``target``."""
    if target.exists() or target.is_symlink():
        # Move the old output aside first so a failed rename loses nothing.
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
        partial.rename(target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        partial.rename(target)
