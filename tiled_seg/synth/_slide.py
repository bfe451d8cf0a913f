"""Public entry points: lazy synthetic arrays and a written OME-Zarr slide."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from tiled_seg.errors import ChannelError, ConfigError, PixelSizeError, TiledSegError
from tiled_seg.io.ngff import NGFFVersion, write_image, write_labels
from tiled_seg.synth._geometry import _count_table, _label_block
from tiled_seg.synth._model import _Model
from tiled_seg.synth._panel import CELL_TYPES, _markers
from tiled_seg.synth._render import _image_block
from tiled_seg.tiling import DEFAULT_CHUNK_PX

__all__ = ["SynthInfo", "make_slide", "synth_arrays"]


@dataclass(frozen=True)
class SynthInfo:
    """What :func:`make_slide` wrote.

    Attributes
    ----------
    path : Path
        The OME-Zarr store; labels ``gt_cells`` and ``gt_nuclei`` inside.
    shape : tuple of int
        ``(C, Y, X)`` of the image (px).
    channel_names : tuple of str
    n_cells : int
        Cells in the ground truth; ids run 1..n_cells.
    pixel_size_um : float
    cell_type_counts : dict of str to int
        Cells per type (keys :data:`CELL_TYPES`).
    """

    path: Path
    shape: tuple[int, int, int]
    channel_names: tuple[str, ...]
    n_cells: int
    pixel_size_um: float
    cell_type_counts: dict[str, int]


def _validated_model(
    size: tuple[int, int], n_channels: int, seed: int, pixel_size_um: float,
    density: float, spillover: float, chunk_px: int,
) -> _Model:
    if len(size) != 2 or any(int(v) != v or v <= 0 for v in size):
        raise ConfigError(f"size must be two positive integers (H, W) in px; got {tuple(size)}.")
    if n_channels < 3:
        raise ChannelError(
            f"a synthetic slide needs at least 3 channels (DNA1, a membrane marker, CD3); "
            f"got n_channels={n_channels}."
        )
    if not 0.1 <= pixel_size_um <= 2.0:
        raise PixelSizeError(
            f"pixel size {pixel_size_um} um is outside 0.1..2 um for a synthetic slide; "
            "use e.g. 1.0 (IMC) or 0.5 (CODEX)."
        )
    if not 0 < density <= 10:
        raise ConfigError(f"density must be in (0, 10] (1 is typical tissue); got {density}.")
    if not 0 <= spillover <= 0.5:
        raise ConfigError(f"spillover must be a fraction in [0, 0.5]; got {spillover}.")
    if chunk_px < 16:
        raise ConfigError(f"chunk_px must be at least 16 px; got {chunk_px}.")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed}.")
    return _Model(int(seed), (int(size[0]), int(size[1])), float(pixel_size_um), float(density),
                  float(spillover), _markers(int(seed), int(n_channels)))


def _location(block_info: dict[Any, Any] | None) -> tuple[int, int, int, int]:
    if block_info is None:
        raise TiledSegError("synthetic blocks are rendered by dask.array.map_blocks, which passes block_info.")
    (y0, y1), (x0, x1) = block_info[None]["array-location"][-2:]
    return y0, y1, x0, x1


def _image_chunk(m: _Model, table: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    return _image_block(m, table, *_location(block_info))


def _label_chunk(m: _Model, table: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    return _label_block(m, table, *_location(block_info))


def _arrays(m: _Model, chunk_px: int) -> tuple[da.Array, da.Array, np.ndarray]:
    table, by_type = _count_table(m)
    yx = da.core.normalize_chunks((chunk_px, chunk_px), m.shape)
    image = da.map_blocks(_image_chunk, m, table, chunks=((len(m.markers),), *yx), dtype=np.uint16,
                          meta=np.empty((0, 0, 0), np.uint16))
    labels = da.map_blocks(_label_chunk, m, table, chunks=((2,), *yx), dtype=np.uint32,
                           meta=np.empty((0, 0, 0), np.uint32))
    return image, labels, by_type


def synth_arrays(
    size: tuple[int, int],
    n_channels: int = 12,
    seed: int = 0,
    pixel_size_um: float = 1.0,
    density: float = 1.0,
    spillover: float = 0.0,
    chunk_px: int = DEFAULT_CHUNK_PX,
) -> tuple[da.Array, da.Array, da.Array, list[str]]:
    """Lazy synthetic IMC-like image and its ground truth.

    Parameters
    ----------
    size : (int, int)
        Slide height and width (px).
    n_channels : int
        Number of channels (>= 3); see :func:`channel_names_for`.
    seed : int
        Same seed, same arrays (byte for byte); chunking does not matter.
    pixel_size_um : float
        Pixel size (um/px, 0.1..2). Cells are 10-20 um and nuclei 5-9 um
        across, so in px they scale with ``1 / pixel_size_um``.
    density : float
        Multiplier of the probability that tissue holds a cell (1: typical).
    spillover : float
        Fraction (0..0.5) of a touching neighbour's signal mixed into each
        membrane-ring pixel (lateral spillover).
    chunk_px : int
        Chunk side (px) of the returned arrays.

    Returns
    -------
    image : dask array, (C, Y, X) uint16
        Ion counts.
    cells, nuclei : dask arrays, (Y, X) uint32
        Ground truth; ids are consecutive from 1 and nucleus ``k`` lies
        inside cell ``k``.
    channel_names : list of str
    """
    m = _validated_model(size, n_channels, seed, pixel_size_um, density, spillover, chunk_px)
    image, labels, _ = _arrays(m, chunk_px)
    return image, labels[0], labels[1], [mk.name for mk in m.markers]


def make_slide(
    path: str | Path,
    size: tuple[int, int] = (1024, 1024),
    n_channels: int = 12,
    seed: int = 0,
    pixel_size_um: float = 1.0,
    density: float = 1.0,
    spillover: float = 0.0,
    chunk_px: int = DEFAULT_CHUNK_PX,
    ngff_version: NGFFVersion = "0.5",
    overwrite: bool = False,
) -> SynthInfo:
    """Write a synthetic IMC-like slide with ground truth as OME-Zarr.

    The image goes to ``path`` (with a pyramid and channel names), the ground
    truth to ``labels/gt_cells`` and ``labels/gt_nuclei``. Generation is
    chunked, so memory does not grow with the slide size.

    Parameters
    ----------
    path : str or Path
        Output store; must not exist unless ``overwrite``.
    size, n_channels, seed, pixel_size_um, density, spillover, chunk_px
        As in :func:`synth_arrays`; ``chunk_px`` is also the zarr chunk side.
    ngff_version : {"0.5", "0.4"}
    overwrite : bool
        Replace an existing store.

    Returns
    -------
    SynthInfo

    Raises
    ------
    ConfigError, ChannelError, PixelSizeError, OutputExistsError
    """
    if ngff_version not in ("0.4", "0.5"):
        raise ConfigError(f"ngff_version must be '0.4' or '0.5'; got {ngff_version!r}.")
    m = _validated_model(size, n_channels, seed, pixel_size_um, density, spillover, chunk_px)
    image, labels, by_type = _arrays(m, chunk_px)
    names = [mk.name for mk in m.markers]
    write_image(path, image, names, m.pixel_size_um, chunk_px=chunk_px,
                ngff_version=ngff_version, overwrite=overwrite)
    write_labels(path, "gt_cells", labels[0], m.pixel_size_um, chunk_px=chunk_px)
    write_labels(path, "gt_nuclei", labels[1], m.pixel_size_um, chunk_px=chunk_px)
    return SynthInfo(
        path=Path(path),
        shape=(len(names), *m.shape),
        channel_names=tuple(names),
        n_cells=int(by_type.sum()),
        pixel_size_um=m.pixel_size_um,
        cell_type_counts={name: int(n) for name, n in zip(CELL_TYPES, by_type)},
    )
