"""Per-tile code: the worker task that segments one tile, and the layer that submits them.

:func:`segment_tile` runs inside one tile task on a worker: it reads the
slide and writes the scratch zarr itself, so only a small
:class:`TileResult` (label ids, timing) goes back through the scheduler.
:func:`segment_tiles` submits those tasks and collects the results.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Sequence

import dask.array as da
import numpy as np
import zarr
from distributed import Client, as_completed

from tiled_seg._manifest import TileResult, record_tile
from tiled_seg.blocks import Progress
from tiled_seg.cluster import gpu_resources
from tiled_seg.errors import BackendError, CorruptChunkError, TileLayoutError
from tiled_seg.io.ngff import Slide, find_unreadable_block, open_slide
from tiled_seg.normalize import build_inputs
from tiled_seg.segmenters import SlideContext, get_segmenter, get_segmenter_class
from tiled_seg.stitch import core_label_ids
from tiled_seg.tiling import Tile, TileGrid


#: Largest label id the uint32 scratch and output arrays hold.
MAX_LABEL_ID = int(np.iinfo(np.uint32).max)


@dataclass(frozen=True)
class TileJob:
    """What every tile task needs; small, shipped once per task."""

    slide_path: str
    pixel_size_um: float
    channels: tuple[str, ...]
    nuclear: tuple[str, ...]
    membrane: tuple[str, ...]
    low: dict[str, float]
    high: dict[str, float]
    backend: str
    options: dict[str, Any]
    context: SlideContext
    scratch: str
    primary: str


@functools.lru_cache(maxsize=8)
def _cached_slide(path: str, pixel_size_um: float) -> Slide:
    return open_slide(path, pixel_size_um)


def damaged_chunk(
    array: da.Array, names: Sequence[str], origin_yx: tuple[int, int], where: str, error: Exception
) -> CorruptChunkError | None:
    """A :class:`CorruptChunkError` naming the first unreadable block of ``(C, Y, X)`` ``array``.

    None when every block reads, i.e. ``error`` was not caused by damaged data.
    """
    block = find_unreadable_block(array)
    if block is None:
        return None
    (channel, _), (y0, y1), (x0, x1) = block
    oy, ox = origin_yx
    return CorruptChunkError(
        f"{where}: channel {names[channel]!r} at y {oy + y0}-{oy + y1}, x {ox + x0}-{ox + x1} px "
        f"cannot be read ({type(error).__name__}: {error}); the chunk is damaged. Copy the "
        "store again or re-create it with `tiled-seg convert`."
    )


def read_extended(job: TileJob, tile: Tile) -> np.ndarray:
    """The job's channels over the tile's extended (halo) box, ``(C, Y, X)``.

    Raises
    ------
    CorruptChunkError
        A chunk of the box cannot be read; names the channel, the box in px and the tile.
    """
    slide = _cached_slide(job.slide_path, job.pixel_size_um)
    index = [slide.channel_index(name) for name in job.channels]
    try:
        return slide.read_region(index, *tile.halo.slices)
    except Exception as error:  # codecs and stores raise many types; diagnose, else re-raise
        window = slide.data[index][(slice(None), *tile.halo.slices)]
        where = f"{slide.path} (full resolution, tile {tile.index}, box {tile.halo})"
        damaged = damaged_chunk(window, job.channels, (tile.halo.y0, tile.halo.x0), where, error)
        if damaged is None:
            raise
        raise damaged from error


def check_ids(labels: np.ndarray, tile: Tile, backend: str) -> None:
    """Refuse label ids the uint32 scratch cannot hold, before they wrap around."""
    if labels.size == 0:
        return
    if int(labels.min()) < 0:
        raise BackendError(
            f"backend {backend!r} returned negative label ids in tile {tile.index}; "
            "labels must be 0 (background) or positive. Fix the backend."
        )
    if int(labels.max()) > MAX_LABEL_ID:
        raise TileLayoutError(
            f"tile {tile.index} (box {tile.halo}) has label id {int(labels.max())}, more than "
            f"uint32 labels hold ({MAX_LABEL_ID}); use a smaller tile size (--tile-size)."
        )


def scratch_array(scratch: str, name: str) -> zarr.Array:
    """The ``(tile, Y, X)`` scratch array ``name`` (``objects`` or ``linked``), writable."""
    return zarr.open_array(f"{scratch}/{name}", mode="r+")


def write_scratch(scratch: str, name: str, tile: Tile, labels: np.ndarray) -> None:
    """Write a tile's labels as its whole scratch chunk.

    A whole-chunk write never reads the old chunk, so a chunk left damaged by
    a killed task is replaced, and rewriting a tile gives the same bytes.
    """
    array = scratch_array(scratch, name)
    chunk = np.zeros(array.shape[1:], dtype=np.uint32)
    chunk[: labels.shape[0], : labels.shape[1]] = labels
    array[tile.index] = chunk


def segment_tile(job: TileJob, tile: Tile) -> TileResult:
    """Segment one tile's extended box and store its labels in scratch.

    Runs on a worker: reads the tile's channels, normalises them with the
    slide-wide numbers in ``job``, runs the backend (loaded once per process)
    and writes the extended-box labels; returns only label ids and timing.
    The tile is recorded in the scratch manifest only after its labels are
    written, so a resumed run can trust every record.
    """
    block = read_extended(job, tile)
    nonfinite = 0
    if not np.issubdtype(block.dtype, np.integer):
        nonfinite = int(np.count_nonzero(~np.isfinite(block[(slice(None), *tile.core_in_halo.slices)])))
    nuclear, membrane = build_inputs(
        block, job.channels, job.nuclear, job.membrane, job.low, job.high
    )
    segmenter = get_segmenter(job.backend, job.options)
    started = time.perf_counter()
    result = segmenter.segment(nuclear, membrane, job.context)
    seconds = time.perf_counter() - started
    objects, linked = result.cells, result.nuclei
    if job.primary == "nuclei" and result.nuclei is not None:
        objects, linked = result.nuclei, None
    check_ids(objects, tile, job.backend)
    write_scratch(job.scratch, "objects", tile, objects)
    core_nuclei = None
    if linked is not None:
        check_ids(linked, tile, job.backend)
        write_scratch(job.scratch, "linked", tile, linked)
        core_nuclei = core_label_ids(tile, linked)
    tile_result = TileResult(tile.index, core_label_ids(tile, objects), core_nuclei, seconds, nonfinite)
    record_tile(job.scratch, tile_result)
    return tile_result


def segment_tiles(
    client: Client, job: TileJob, grid: TileGrid, progress: Progress | None,
    done: dict[int, TileResult],
) -> list[TileResult]:
    """Segment the tiles not in ``done`` (recorded by an interrupted run), in tile index order.

    Submits one :func:`segment_tile` task per tile (on GPU workers when the
    backend uses a GPU) and reports ``progress("segment", done, total)`` as
    tiles finish.
    """
    resources = gpu_resources(client, get_segmenter_class(job.backend).uses_gpu)
    futures = [
        client.submit(segment_tile, job, tile, pure=False, resources=resources)
        for tile in grid.tiles if tile.index not in done
    ]
    results = list(done.values())
    total = len(grid.tiles)
    if progress is not None and results:
        progress("segment", len(results), total)
    try:
        # Without the loop, as_completed looks for dask's default client, which need not exist.
        for future in as_completed(futures, loop=client.loop):
            results.append(future.result())
            if progress is not None:
                progress("segment", len(results), total)
    except BaseException:
        # A failed tile fails the run; do not leave its siblings running.
        client.cancel(futures)
        raise
    return sorted(results, key=lambda r: r.index)
