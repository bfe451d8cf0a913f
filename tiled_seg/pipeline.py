"""Wire the stages on dask: stats, plan, segment, stitch, write.

Tasks read the slide and read/write a scratch zarr directly; only small
records (label ids, matches, timings) cross the scheduler.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import dask
import dask.array as da
import numpy as np
import zarr
from distributed import Client, as_completed

from tiled_seg import __version__
from tiled_seg._manifest import (
    TileResult,
    check_scratch,
    create_scratch,
    fingerprint,
    read_records,
    record_tile,
    scratch_path,
)
from tiled_seg.cluster import connect, gpu_resources
from tiled_seg.config import RunConfig
from tiled_seg.errors import (
    BackendError,
    CorruptChunkError,
    OutputExistsError,
    OutputNotWritableError,
    PixelSizeError,
    ResumeError,
    TiledSegError,
    TileLayoutError,
)
from tiled_seg.expand import expand_store
from tiled_seg.io._fs import exists, remove_tree, same_location
from tiled_seg.io.ngff import Slide, find_unreadable_block, list_labels, open_slide, write_labels
from tiled_seg.measure import measure_store
from tiled_seg.normalize import SlideStats, build_inputs, choose_stats_level, compute_slide_stats
from tiled_seg.segmenters import SlideContext, get_segmenter, get_segmenter_class
from tiled_seg.stitch import (
    StitchPlan,
    TileMatches,
    apply_lookup,
    build_lookup_tables,
    core_label_ids,
    match_tiles,
)
from tiled_seg.tiling import Tile, TileGrid, plan_tiles

__all__ = ["RunResult", "TileResult", "run", "segment_tile", "halo_px_for"]

Progress = Callable[[str, int, int], None]

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


@dataclass(frozen=True)
class RunResult:
    """What a run wrote and measured."""

    store: str
    labels: dict[str, str]
    tables: dict[str, str]
    n_cells: int
    n_nuclei: int | None
    n_tiles: int
    tile_px: int
    halo_px: int
    timings: dict[str, float]
    segment_seconds: float
    stitch: dict[str, int] = field(default_factory=dict)
    #: NaN/inf pixels (treated as 0), in total and per tile index where any.
    nonfinite_px: int = 0
    nonfinite_tiles: dict[int, int] = field(default_factory=dict)
    #: Tiles taken from an interrupted run's manifest instead of segmented.
    resumed_tiles: int = 0

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready run summary."""
        return {
            "store": self.store,
            "labels": self.labels,
            "tables": self.tables,
            "n_cells": self.n_cells,
            "n_nuclei": self.n_nuclei,
            "n_tiles": self.n_tiles,
            "tile_px": self.tile_px,
            "halo_px": self.halo_px,
            "timings_s": self.timings,
            "segmenter_seconds": self.segment_seconds,
            "stitch": self.stitch,
            "nonfinite_px": self.nonfinite_px,
            "nonfinite_tiles": {str(k): v for k, v in self.nonfinite_tiles.items()},
            "resumed_tiles": self.resumed_tiles,
        }


@functools.lru_cache(maxsize=8)
def _cached_slide(path: str, pixel_size_um: float) -> Slide:
    return open_slide(path, pixel_size_um)


def _damaged_chunk(
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


def _read_extended(job: TileJob, tile: Tile) -> np.ndarray:
    slide = _cached_slide(job.slide_path, job.pixel_size_um)
    index = [slide.channel_index(name) for name in job.channels]
    window = slide.data[index][(slice(None), *tile.halo.slices)]
    try:
        return slide.read_region(index, *tile.halo.slices)
    except Exception as error:  # codecs and stores raise many types; diagnose, else re-raise
        where = f"{slide.path} (full resolution, tile {tile.index}, box {tile.halo})"
        damaged = _damaged_chunk(window, job.channels, (tile.halo.y0, tile.halo.x0), where, error)
        if damaged is None:
            raise
        raise damaged from error


def _check_ids(labels: np.ndarray, tile: Tile, backend: str) -> None:
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


def _write_scratch(scratch: str, name: str, tile: Tile, labels: np.ndarray) -> None:
    """Write a tile's labels as its whole scratch chunk.

    A whole-chunk write never reads the old chunk, so a chunk left damaged by
    a killed task is replaced, and rewriting a tile gives the same bytes.
    """
    array = _scratch_array(scratch, name)
    chunk = np.zeros(array.shape[1:], dtype=np.uint32)
    chunk[: labels.shape[0], : labels.shape[1]] = labels
    array[tile.index] = chunk


def _scratch_array(scratch: str, name: str) -> zarr.Array:
    return zarr.open_array(f"{scratch}/{name}", mode="r+")


def segment_tile(job: TileJob, tile: Tile) -> TileResult:
    """Segment one tile's extended box and store its labels in scratch.

    Runs on a worker: reads the tile's channels, normalises them with the
    slide-wide numbers in ``job``, runs the backend (loaded once per process)
    and writes the extended-box labels; returns only label ids and timing.
    The tile is recorded in the scratch manifest only after its labels are
    written, so a resumed run can trust every record.
    """
    block = _read_extended(job, tile)
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
    _check_ids(objects, tile, job.backend)
    _write_scratch(job.scratch, "objects", tile, objects)
    core_nuclei = None
    if linked is not None:
        _check_ids(linked, tile, job.backend)
        _write_scratch(job.scratch, "linked", tile, linked)
        core_nuclei = core_label_ids(tile, linked)
    result = TileResult(tile.index, core_label_ids(tile, objects), core_nuclei, seconds, nonfinite)
    record_tile(job.scratch, result)
    return result


def _tile_labels(scratch: str, name: str, tile: Tile) -> np.ndarray:
    height, width = tile.halo.shape
    return _scratch_array(scratch, name)[tile.index, :height, :width]


def _match_pair(scratch: str, tile_a: Tile, tile_b: Tile, min_overlap: float) -> TileMatches:
    return match_tiles(
        tile_a,
        _tile_labels(scratch, "objects", tile_a),
        tile_b,
        _tile_labels(scratch, "objects", tile_b),
        min_overlap=min_overlap,
    )


def _core_block(scratch: str, name: str, tile: Tile, lut: np.ndarray) -> np.ndarray:
    core = tile.core.relative_to(tile.halo)
    return apply_lookup(_tile_labels(scratch, name, tile)[core.slices], lut)


def _stitched_array(scratch: str, name: str, grid: TileGrid, plan: StitchPlan) -> da.Array:
    """Global labels as a dask array, one block per tile core.

    Each block task carries only its own tile's lookup table.
    """
    rows: list[list[da.Array]] = []
    for tile in grid.tiles:
        block = da.from_delayed(
            dask.delayed(_core_block)(scratch, name, tile, plan.luts[tile.index]),
            shape=tile.core.shape,
            dtype=np.uint32,
        )
        if tile.grid_yx[1] == 0:
            rows.append([])
        rows[-1].append(block)
    return da.block(rows)


def halo_px_for(config: RunConfig, pixel_size_um: float) -> int:
    """Halo in px: the configured um, or the backend's largest cell diameter."""
    halo_um = config.tiling.halo_um
    if halo_um == "auto":
        backend = get_segmenter_class(config.backend.name)(config.backend.options)
        halo_um = backend.max_cell_diameter_um
    return max(1, math.ceil(float(halo_um) / pixel_size_um))


def _set_status(store: str, status: dict[str, Any]) -> None:
    group = zarr.open_group(store, mode="a")
    group.attrs["tiled_seg"] = {**group.attrs.get("tiled_seg", {}), **status}


def _start_status(store: str, status: dict[str, Any]) -> None:
    """Replace the run record, so a rerun never shows the previous run's summary."""
    group = zarr.open_group(store, mode="a")
    previous = group.attrs.get("tiled_seg", {})
    kept = {"source": previous["source"]} if "source" in previous else {}
    group.attrs["tiled_seg"] = {**kept, **status}


def _run_state(store: str) -> dict[str, Any]:
    """The ``tiled_seg`` record of ``store``; empty when it has none or does not exist."""
    if not exists(store):
        return {}
    return dict(zarr.open_group(store, mode="r").attrs.get("tiled_seg", {}))


def _resumable(store: str, input_key: str) -> bool:
    """Whether ``store`` holds an interrupted run of these inputs and configuration."""
    state = _run_state(store)
    if state.get("status") == "complete":
        raise OutputExistsError(
            f"{store} holds a complete run; there is nothing to resume. Run without "
            "--resume, with --overwrite, to segment it again."
        )
    if state.get("status") != "running":
        return False
    if state.get("input_key") != input_key:
        raise ResumeError(
            f"the interrupted run in {store} used a different input or configuration; "
            "resume with the original configuration, or rerun without --resume and with "
            "--overwrite to start over."
        )
    return True


def _prepare_output(
    slide: Slide, output: str | None, names: list[str], overwrite: bool,
    resume: bool = False, input_key: str = "",
) -> str:
    store = output or slide.path
    if output and same_location(output, slide.path):
        store = slide.path
    if resume and _resumable(store, input_key):
        return store
    if store != slide.path:
        if exists(store) and not overwrite:
            raise OutputExistsError(f"{store} exists; choose another --output or pass --overwrite.")
        remove_tree(store)
        version = slide.ngff_version
        group = zarr.open_group(store, mode="w", zarr_format=3 if version == "0.5" else 2)
        if version == "0.5":
            group.attrs["ome"] = {"version": "0.5"}
        group.attrs["tiled_seg"] = {"source": slide.path}
        return store
    present = [n for n in names if n in list_labels(store)]
    if present and not overwrite:
        raise OutputExistsError(
            f"{store} already has labels {present}; pass --overwrite to replace them "
            "or --output to write elsewhere."
        )
    return store


def run(
    slide_path: str | Path,
    config: RunConfig,
    *,
    output: str | Path | None = None,
    client: Client | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    resume: bool = False,
) -> RunResult:
    """Segment a whole slide tile by tile and write stitched labels.

    Parameters
    ----------
    slide_path : str or Path
        OME-NGFF image store.
    config : RunConfig
        Panel, backend, tiling, normalisation and output names.
    output : str or Path, optional
        Separate output store; default writes ``labels/`` into the slide's store.
    client : distributed.Client, optional
        Where tasks run; default a local cluster (one worker per core).
    overwrite : bool
        Replace existing labels of the same names.
    progress : callable, optional
        Called as ``progress(stage, done, total)`` while tiles finish.
    resume : bool
        Continue an interrupted run of the same input and configuration in
        the output store: tiles recorded in its scratch manifest are not
        segmented again, and the labels are identical to an uninterrupted
        run. Without an interrupted run this starts a new one.

    Returns
    -------
    RunResult

    Raises
    ------
    ResumeError
        ``resume`` with a different input or configuration than the
        interrupted run.
    OutputNotWritableError
        The output store cannot be written.
    """
    if client is None:
        with connect(config=config.cluster) as local:
            return run(slide_path, config, output=output, client=local,
                       overwrite=overwrite, progress=progress, resume=resume)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    slide = open_slide(slide_path, config.pixel_size_um)
    if slide.pixel_size_um is None:
        raise PixelSizeError(
            f"{slide.path} does not state its pixel size; give it with "
            "--pixel-size-um (or pixel_size_um in the config), e.g. 1.0 for IMC."
        )
    panel = config.panel
    membrane = () if config.compartment == "nuclear" else panel.membrane
    channels = tuple(dict.fromkeys([*panel.nuclear, *membrane]))
    for name in channels:
        slide.channel_index(name)
    primary = "nuclei" if config.compartment == "nuclear" else "cells"
    out_names = {"cells": config.outputs.cells, "nuclei": config.outputs.nuclei}
    written_names = list(out_names.values())
    if primary == "nuclei" and config.expand_nuclei_um is None:
        written_names = [out_names["nuclei"]]
    # Refuse an unknown backend before anything is written.
    get_segmenter_class(config.backend.name)
    halo_px = halo_px_for(config, slide.pixel_size_um)
    grid = plan_tiles(slide.shape_yx, config.tiling.tile_px, halo_px, slide.chunk_yx)
    level_index = _stats_level(slide, config)
    input_key = fingerprint(
        version=__version__, slide=slide.path if "://" in slide.path else str(Path(slide.path).resolve()),
        shape=slide.data.shape, dtype=str(slide.data.dtype),
        chunk_yx=slide.chunk_yx, pixel_size_um=slide.pixel_size_um,
        config=config.model_dump(mode="json", exclude={"cluster"}),
    )
    target = slide.path if output is None else str(output)
    try:
        store = _prepare_output(slide, None if output is None else str(output), written_names,
                                overwrite, resume, input_key)
        # Set before any label is touched: an interrupted run never looks complete.
        _start_status(store, {
            "status": "running",
            "version": __version__,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "config": config.model_dump(mode="json"),
            "input_key": input_key,
        })
    except TiledSegError:
        raise
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot write the output {target} ({error.strerror or error}); choose a writable "
            "--output. The input was not modified."
        ) from error
    timings["open"] = time.perf_counter() - clock

    clock = time.perf_counter()
    stats = _compute_stats(slide, level_index, config, channels, membrane)
    _set_status(store, {"stats": stats.to_dict()})
    timings["stats"] = time.perf_counter() - clock

    scratch = scratch_path(store)
    scratch_key = fingerprint(input=input_key, stats=stats.to_dict(), tile_px=grid.tile_px,
                              halo_px=halo_px)
    done: dict[int, TileResult] = {}
    if resume and check_scratch(scratch, scratch_key):
        done = read_records(scratch)
    else:
        remove_tree(scratch)
        extended = (len(grid.tiles), grid.tile_px[0] + 2 * halo_px, grid.tile_px[1] + 2 * halo_px)
        create_scratch(scratch, scratch_key, extended, len(grid.tiles))

    job = TileJob(
        slide_path=slide.path,
        pixel_size_um=slide.pixel_size_um,
        channels=channels,
        nuclear=panel.nuclear,
        membrane=membrane,
        low=stats.low,
        high=stats.high,
        backend=config.backend.name,
        options=dict(config.backend.options),
        context=SlideContext(
            pixel_size_um=slide.pixel_size_um,
            nuclear_threshold=stats.nuclear_threshold,
            membrane_threshold=stats.membrane_threshold,
        ),
        scratch=scratch,
        primary=primary,
    )

    clock = time.perf_counter()
    results = _run_tiles(client, job, grid, progress, done)
    timings["segment"] = time.perf_counter() - clock

    clock = time.perf_counter()
    pairs = grid.neighbour_pairs()
    pair_futures = [
        client.submit(_match_pair, scratch, grid.tiles[a], grid.tiles[b],
                      config.tiling.min_overlap, pure=False)
        for a, b in pairs
    ]
    matches = dict(zip(pairs, client.gather(pair_futures)))
    plan = build_lookup_tables(grid, [r.core_ids for r in results], matches)
    timings["stitch"] = time.perf_counter() - clock

    clock = time.perf_counter()
    labels_written: dict[str, str] = {}
    primary_name = out_names[primary]
    chunk_px = min(slide.chunk_yx)
    write_labels(store, primary_name, _stitched_array(scratch, "objects", grid, plan),
                 slide.pixel_size_um, chunk_px=chunk_px, overwrite=True)
    labels_written[primary] = f"{store}/labels/{primary_name}"
    n_nuclei: int | None = plan.n_objects if primary == "nuclei" else None
    if primary == "cells" and all(r.core_nucleus_ids is not None for r in results):
        write_labels(store, out_names["nuclei"], _stitched_array(scratch, "linked", grid, plan),
                     slide.pixel_size_um, chunk_px=chunk_px, overwrite=True)
        labels_written["nuclei"] = f"{store}/labels/{out_names['nuclei']}"
        ids = [plan.luts[r.index][r.core_nucleus_ids] for r in results]
        n_nuclei = int(np.unique(np.concatenate(ids)).size) if ids else 0
    timings["write"] = time.perf_counter() - clock

    if config.expand_nuclei_um is not None:
        clock = time.perf_counter()
        expand_store(store, source=out_names["nuclei"], target=out_names["cells"],
                     radius_um=config.expand_nuclei_um, pixel_size_um=slide.pixel_size_um,
                     overwrite=True)
        labels_written["cells"] = f"{store}/labels/{out_names['cells']}"
        timings["expand"] = time.perf_counter() - clock

    tables: dict[str, str] = {}
    if config.measure and "cells" in labels_written:
        clock = time.perf_counter()
        measured = measure_store(
            store,
            labels=out_names["cells"],
            nuclei=out_names["nuclei"] if "nuclei" in labels_written else None,
            pixel_size_um=slide.pixel_size_um,
            table_name=config.outputs.table,
            distance_um=config.neighbour_distance_um,
            overwrite=True,
            config=config.model_dump(mode="json"),
            image_store=slide.path,
        )
        tables = dict(measured.paths)
        timings["measure"] = time.perf_counter() - clock

    result = RunResult(
        store=str(store),
        labels=labels_written,
        tables=tables,
        n_cells=plan.n_objects if "cells" in labels_written else 0,
        n_nuclei=n_nuclei,
        n_tiles=len(grid.tiles),
        tile_px=grid.tile_px[0],
        halo_px=halo_px,
        timings=timings,
        segment_seconds=float(sum(r.segment_seconds for r in results)),
        stitch=plan.stats(),
        nonfinite_px=sum(r.nonfinite_px for r in results),
        nonfinite_tiles={r.index: r.nonfinite_px for r in results if r.nonfinite_px},
        resumed_tiles=len(done),
    )
    _set_status(store, {
        "status": "complete",
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "summary": result.to_summary(),
    })
    # Kept until the run is complete, so a run killed in expand or measure resumes after stitching.
    remove_tree(scratch)
    return result


def _stats_level(slide: Slide, config: RunConfig) -> int:
    """The pyramid level the statistics are computed on, validated."""
    level_index = (
        choose_stats_level([lv.shape for lv in slide.levels], config.normalization.min_stats_pixels)
        if config.normalization.level == "auto"
        else int(config.normalization.level)
    )
    if not 0 <= level_index < len(slide.levels):
        raise TileLayoutError(
            f"normalization.level {level_index} does not exist; the slide has "
            f"{len(slide.levels)} levels."
        )
    return level_index


def _compute_stats(
    slide: Slide, level_index: int, config: RunConfig,
    channels: tuple[str, ...], membrane: tuple[str, ...],
) -> SlideStats:
    """Slide-wide statistics; a damaged chunk is named in a :class:`CorruptChunkError`."""
    level = slide.levels[level_index]
    try:
        return compute_slide_stats(
            level,
            slide.channel_names,
            config.panel.nuclear,
            membrane,
            low_percentile=config.normalization.low_percentile,
            high_percentile=config.normalization.high_percentile,
            level_index=level_index,
        )
    except Exception as error:  # codecs and stores raise many types; diagnose, else re-raise
        panel = level[[slide.channel_index(name) for name in channels]]
        damaged = _damaged_chunk(panel, channels, (0, 0), f"{slide.path} (pyramid level {level_index})", error)
        if damaged is None:
            raise
        raise damaged from error


def _run_tiles(
    client: Client, job: TileJob, grid: TileGrid, progress: Progress | None,
    done: dict[int, TileResult],
) -> list[TileResult]:
    """Segment the tiles not in ``done`` (recorded by an interrupted run)."""
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
        for future in as_completed(futures):
            results.append(future.result())
            if progress is not None:
                progress("segment", len(results), total)
    except BaseException:
        # A failed tile fails the run; do not leave its siblings running.
        client.cancel(futures)
        raise
    return sorted(results, key=lambda r: r.index)
