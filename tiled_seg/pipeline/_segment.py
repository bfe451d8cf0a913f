"""Per-tile code: the worker tasks that segment tiles, and the layer that submits them.

A backend without a predict stage runs in one task per tile
(:func:`segment_tile`). A staged backend runs :func:`prepare_tile` (CPU),
:func:`predict_batch` (the network, routed to ``GPU`` workers, on the
windows of one or more tiles) and :func:`finish_tile` (CPU: postprocess,
scratch). Tasks read the slide and write the scratch zarr themselves; only a
small :class:`TileResult` (label ids, timing) comes back to the client.
Prepared windows and network outputs move between workers directly, and at
most a bounded number of tiles is in flight per accelerator.
:func:`segment_tiles` submits the tasks and collects the results.
"""

from __future__ import annotations

import functools
import operator
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

import dask.array as da
import numpy as np
from dask.typing import Key
from distributed import Client, Future, as_completed

from tiled_seg.blocks import Progress
from tiled_seg.cluster import count_accelerators, gpu_resources
from tiled_seg.errors import CorruptChunkError
from tiled_seg.io.ngff import Slide, find_unreadable_block, open_slide
from tiled_seg.pipeline.state import TileResult, record_tile, write_scratch
from tiled_seg.segment.backends import SlideContext, get_segmenter, get_segmenter_class
from tiled_seg.segment.backends.base import NetworkOutputs, PreparedTile, Segmentation, predict_tiles
from tiled_seg.segment.tiles import tile_inputs, tile_labels
from tiled_seg.tiling import Tile, TileGrid
from tiled_seg.tiling.match import core_label_ids


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


def read_inputs(job: TileJob, tile: Tile) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Nuclear and membrane inputs of the tile's halo box, and its core's non-finite px."""
    block = read_extended(job, tile)
    return tile_inputs(block, tile, job.channels, job.nuclear, job.membrane, job.low, job.high)


def store_tile(
    job: TileJob, tile: Tile, result: Segmentation, seconds: float, nonfinite: int
) -> TileResult:
    """Check a tile's labels, write them to scratch and record the tile.

    The tile is recorded in the scratch manifest only after its labels are
    written, so a resumed run can trust every record.
    """
    objects, linked = tile_labels(result, tile, job.backend, job.primary)
    write_scratch(job.scratch, "objects", tile, objects)
    core_nuclei = None
    if linked is not None:
        write_scratch(job.scratch, "linked", tile, linked)
        core_nuclei = core_label_ids(tile, linked)
    tile_result = TileResult(tile.index, core_label_ids(tile, objects), core_nuclei, seconds, nonfinite)
    record_tile(job.scratch, tile_result)
    return tile_result


def segment_tile(job: TileJob, tile: Tile) -> TileResult:
    """Segment one tile's extended box in one task and store its labels in scratch.

    Runs on a worker: reads the tile's channels, normalises them with the
    slide-wide numbers in ``job``, runs the backend's one-call ``segment``
    (loaded once per process) and writes the extended-box labels; returns
    only label ids and timing. The path for backends without a predict stage.
    """
    nuclear, membrane, nonfinite = read_inputs(job, tile)
    segmenter = get_segmenter(job.backend, job.options)
    started = time.perf_counter()
    result = segmenter.segment(nuclear, membrane, job.context)
    return store_tile(job, tile, result, time.perf_counter() - started, nonfinite)


@dataclass(frozen=True)
class Prepared:
    """What a prepare task hands to predict and postprocess (moves between workers)."""

    tile: PreparedTile
    nonfinite_px: int
    #: Time in the backend's prepare stage (s).
    seconds: float


def prepare_tile(job: TileJob, tile: Tile) -> Prepared:
    """CPU task: read and normalise a tile, then the backend's prepare stage."""
    nuclear, membrane, nonfinite = read_inputs(job, tile)
    segmenter = get_segmenter(job.backend, job.options)
    started = time.perf_counter()
    prepared = segmenter.prepare(nuclear, membrane, job.context)
    return Prepared(prepared, nonfinite, time.perf_counter() - started)


def predict_batch(job: TileJob, *prepared: Prepared) -> list[tuple[NetworkOutputs, float]]:
    """Accelerator task: the network on the windows of ``prepared`` tiles, batched across them.

    Returns, per tile, its network outputs and its share of the network time
    (s, by windows).
    """
    segmenter = get_segmenter(job.backend, job.options)
    started = time.perf_counter()
    outputs = predict_tiles(segmenter, [p.tile for p in prepared])
    seconds = time.perf_counter() - started
    windows = max(sum(p.tile.n_windows for p in prepared), 1)
    return [(out, seconds * p.tile.n_windows / windows) for out, p in zip(outputs, prepared)]


def finish_tile(
    job: TileJob, tile: Tile, prepared: Prepared, predicted: tuple[NetworkOutputs, float]
) -> TileResult:
    """CPU task: the backend's postprocess stage, then the labels to scratch.

    ``predicted`` is the tile's entry of :func:`predict_batch`.
    """
    outputs, predict_seconds = predicted
    segmenter = get_segmenter(job.backend, job.options)
    started = time.perf_counter()
    result = segmenter.postprocess(prepared.tile, outputs, job.context)
    seconds = prepared.seconds + predict_seconds + time.perf_counter() - started
    return store_tile(job, tile, result, seconds, prepared.nonfinite_px)


def skip_tile(job: TileJob, tile: Tile) -> TileResult:
    """Record a tile without tissue: no labels (its scratch chunks stay 0)."""
    empty = np.zeros(0, np.int64)
    result = TileResult(tile.index, empty, empty, 0.0, 0)
    record_tile(job.scratch, result)
    return result


@dataclass(frozen=True)
class Schedule:
    """How the staged path feeds the accelerator.

    Attributes
    ----------
    tiles_per_predict : int
        Prepared tiles whose windows one predict task runs together.
    in_flight_tiles : int or None
        Most tiles between the start of their prepare task and the end of
        their postprocess, per accelerator (the bounded queue); None: the
        cluster's threads plus two per accelerator.
    """

    tiles_per_predict: int = 1
    in_flight_tiles: int | None = None


def segment_tiles(
    client: Client, job: TileJob, grid: TileGrid, progress: Progress | None,
    done: dict[int, TileResult], *, skip: Sequence[int] = (),
    on_tile: Callable[[TileResult], None] | None = None, schedule: Schedule = Schedule(),
) -> list[TileResult]:
    """Segment the tiles not in ``done`` (recorded by an interrupted run), in tile index order.

    A backend with a predict stage runs as prepare (any worker), predict
    (workers with the ``GPU`` resource where there are any) and postprocess
    tasks, with at most ``schedule.in_flight_tiles`` tiles per accelerator
    in flight; other backends run one :func:`segment_tile` task per tile.
    Tiles in ``skip`` (no tissue) are recorded without labels.
    ``on_tile(result)`` is called for every tile as it finishes (resumed
    tiles first) and ``progress("segment", done, total)`` is reported.
    """
    results = list(done.values())
    total = len(grid.tiles)
    skipped = set(skip)

    def finished(result: TileResult) -> None:
        results.append(result)
        if on_tile is not None:
            on_tile(result)
        if progress is not None:
            progress("segment", len(results), total)

    for result in done.values():
        if on_tile is not None:
            on_tile(result)
    if progress is not None and results:
        progress("segment", len(results), total)
    todo = [tile for tile in grid.tiles if tile.index not in done]
    for tile in todo:
        if tile.index in skipped:
            finished(skip_tile(job, tile))
    todo = [tile for tile in todo if tile.index not in skipped]
    segmenter_class = get_segmenter_class(job.backend)
    if segmenter_class(job.options).staged():
        _run_staged(client, job, todo, finished, schedule)
    else:
        resources = gpu_resources(client, segmenter_class.uses_gpu)
        futures = [client.submit(segment_tile, job, tile, pure=False, resources=resources) for tile in todo]
        _collect(client, futures, lambda future: finished(future.result()))
    return sorted(results, key=lambda r: r.index)


def _collect(client: Client, futures: list[Future], handle: Callable[[Future], None]) -> None:
    """Hand each future to ``handle`` as it completes; on failure cancel the rest and raise."""
    try:
        # Without the loop, as_completed looks for dask's default client, which need not exist.
        for future in as_completed(futures, loop=client.loop):
            handle(future)
    except BaseException:
        # A failed tile fails the run; do not leave its siblings running.
        client.cancel(futures)
        raise


def _run_staged(
    client: Client, job: TileJob, tiles: list[Tile], finished: Callable[[TileResult], None],
    schedule: Schedule,
) -> None:
    """Prepare, predict and postprocess ``tiles`` with a bounded number in flight."""
    resources = gpu_resources(client, True)
    accelerators = max(count_accelerators(client), 1)
    threads = sum(client.nthreads().values())
    limit = accelerators * (schedule.in_flight_tiles or threads + 2)
    group = max(schedule.tiles_per_predict, 1)
    waiting = list(reversed(tiles))
    ready: list[tuple[Tile, Future]] = []
    # Only unfinished tasks are held, so a finished tile's data is released.
    live: dict[Key, Future] = {}
    role: dict[Key, tuple[str, Tile | None]] = {}
    in_flight = 0
    preparing = 0
    completed = as_completed(loop=client.loop)

    def submit(kind: str, tile: Tile | None, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future = client.submit(function, *args, pure=False, **kwargs)
        role[future.key] = (kind, tile)
        live[future.key] = future
        completed.add(future)
        return future

    def feed() -> None:
        nonlocal in_flight, preparing
        while waiting and in_flight < limit:
            tile = waiting.pop()
            # Earlier tiles first, so a pair's tiles finish close together.
            submit("prepare", tile, prepare_tile, job, tile, priority=-tile.index)
            in_flight += 1
            preparing += 1

    def launch(force: bool) -> None:
        while len(ready) >= group or (force and ready):
            batch, ready[:] = ready[:group], ready[group:]
            outputs = submit("predict", None, predict_batch, job, *[p for _, p in batch],
                             resources=resources, priority=100)
            for position, (tile, prepared) in enumerate(batch):
                # Picked out where the batch lies, so each tile's outputs travel alone.
                predicted = client.submit(operator.getitem, outputs, position, pure=False, priority=100)
                submit("finish", tile, finish_tile, job, tile, prepared, predicted, priority=50)

    feed()
    try:
        for future in completed:
            kind, tile = role.pop(future.key)
            del live[future.key]
            if future.status == "error":
                future.result()  # raises the task's error; its data stays on the workers otherwise
            if kind == "prepare":
                preparing -= 1
                ready.append((cast(Tile, tile), future))
                launch(force=preparing == 0)
            elif kind == "finish":
                in_flight -= 1
                finished(future.result())
                feed()
    except BaseException:
        client.cancel(list(live.values()) + [p for _, p in ready])
        raise
