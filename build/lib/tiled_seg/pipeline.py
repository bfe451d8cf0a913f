"""Wire the stages on dask: stats, plan, segment, stitch, write.

Tasks read the slide and read/write a scratch zarr directly; only small
records (label ids, matches, timings) cross the scheduler.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
import zarr
from distributed import Client, as_completed

from tiled_seg import __version__
from tiled_seg.config import RunConfig
from tiled_seg.errors import OutputExistsError, PixelSizeError, TileLayoutError
from tiled_seg.expand import expand_store
from tiled_seg.io.ngff import Slide, list_labels, open_slide, write_labels
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
class TileResult:
    """Small summary a tile task returns."""

    index: int
    core_ids: np.ndarray
    core_nucleus_ids: np.ndarray | None
    segment_seconds: float


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
        }


@functools.lru_cache(maxsize=8)
def _cached_slide(path: str, pixel_size_um: float) -> Slide:
    return open_slide(path, pixel_size_um)


def _read_extended(job: TileJob, tile: Tile) -> np.ndarray:
    slide = _cached_slide(job.slide_path, job.pixel_size_um)
    index = [slide.channel_index(name) for name in job.channels]
    window = slide.data[index][(slice(None), *tile.halo.slices)]
    return np.asarray(window.compute(scheduler="synchronous"))


def _scratch_array(scratch: str, name: str) -> zarr.Array:
    return zarr.open_array(f"{scratch}/{name}", mode="r+")


def segment_tile(job: TileJob, tile: Tile) -> TileResult:
    """Segment one tile's extended box and store its labels in scratch.

    Runs on a worker: reads the tile's channels, normalises them with the
    slide-wide numbers in ``job``, runs the backend (loaded once per process)
    and writes the extended-box labels; returns only label ids and timing.
    """
    block = _read_extended(job, tile)
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
    height, width = tile.halo.shape
    _scratch_array(job.scratch, "objects")[tile.index, :height, :width] = objects
    core_nuclei = None
    if linked is not None:
        _scratch_array(job.scratch, "linked")[tile.index, :height, :width] = linked
        core_nuclei = core_label_ids(tile, linked)
    return TileResult(tile.index, core_label_ids(tile, objects), core_nuclei, seconds)


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


def _prepare_output(slide: Slide, output: str | None, names: list[str], overwrite: bool) -> str:
    store = output or slide.path
    if output and Path(output).resolve() == Path(slide.path).resolve():
        store = slide.path
    if store != slide.path:
        if Path(store).exists() and not overwrite:
            raise OutputExistsError(f"{store} exists; choose another --output or pass --overwrite.")
        if Path(store).exists():
            shutil.rmtree(store)
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

    Returns
    -------
    RunResult
    """
    if client is None:
        from tiled_seg.cluster import connect

        with connect() as local:
            return run(slide_path, config, output=output, client=local,
                       overwrite=overwrite, progress=progress)
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
    halo_px = halo_px_for(config, slide.pixel_size_um)
    grid = plan_tiles(slide.shape_yx, config.tiling.tile_px, halo_px, slide.chunk_yx)
    store = _prepare_output(slide, None if output is None else str(output), written_names, overwrite)
    timings["open"] = time.perf_counter() - clock

    clock = time.perf_counter()
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
    stats: SlideStats = compute_slide_stats(
        slide.levels[level_index],
        slide.channel_names,
        panel.nuclear,
        membrane,
        low_percentile=config.normalization.low_percentile,
        high_percentile=config.normalization.high_percentile,
        level_index=level_index,
    )
    timings["stats"] = time.perf_counter() - clock

    _set_status(store, {
        "status": "running",
        "version": __version__,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "config": config.model_dump(mode="json"),
        "stats": stats.to_dict(),
    })
    scratch = f"{str(store).rstrip('/')}.tiled_seg_scratch"
    if Path(scratch).exists():
        shutil.rmtree(scratch)
    extended = (len(grid.tiles), grid.tile_px[0] + 2 * halo_px, grid.tile_px[1] + 2 * halo_px)
    scratch_group = zarr.open_group(scratch, mode="w")
    for name in ("objects", "linked"):
        scratch_group.create_array(
            name, shape=extended, chunks=(1, *extended[1:]), dtype=np.uint32, fill_value=0
        )

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
    results = _run_tiles(client, job, grid, progress)
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
    shutil.rmtree(scratch)

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
    )
    _set_status(store, {
        "status": "complete",
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "summary": result.to_summary(),
    })
    return result


def _run_tiles(client: Client, job: TileJob, grid: TileGrid, progress: Progress | None) -> list[TileResult]:
    futures = [client.submit(segment_tile, job, tile, pure=False) for tile in grid.tiles]
    results: list[TileResult] = []
    for done, future in enumerate(as_completed(futures), start=1):
        results.append(future.result())
        if progress is not None:
            progress("segment", done, len(futures))
    return sorted(results, key=lambda r: r.index)
