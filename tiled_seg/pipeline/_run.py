"""``run``: a whole slide through every stage, one named stage function each.

Stages in order: open and validate the inputs, plan the tiles, prepare the
output, slide statistics, segment the tiles, stitch, write the labels (their
coarser levels on a thread while the next stages run), expand nuclei,
measure, finish. Every dask computation runs on the client given to
:func:`run`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from distributed import Client, Future

from tiled_seg.cluster import connect
from tiled_seg.config import RunConfig
from tiled_seg.io.fs import remove_tree
from tiled_seg.io.ngff import write_label_images, write_label_pyramids
from tiled_seg.measure import MeasureResult, measure_store, warm_block_task
from tiled_seg.measure.redsea import compensate_store
from tiled_seg.pipeline._checks import Inputs, Plan, check_h5ad, check_run, open_inputs, plan_run
from tiled_seg.pipeline._lock import run_lock
from tiled_seg.pipeline._output import mark_complete, mark_failed, output_store, start_output, update_state
from tiled_seg.pipeline._scheduler import computing_on
from tiled_seg.pipeline._segment import Progress, Schedule, TileJob, damaged_chunk, segment_tiles
from tiled_seg.pipeline.state import ScratchLabels, TileResult, prepare_scratch
from tiled_seg.quality.qc import run_qc
from tiled_seg.segment.backends import SlideContext
from tiled_seg.segment.expand import expand_store
from tiled_seg.segment.normalize import SlideStats, build_inputs, compute_slide_stats
from tiled_seg.tiling import Box, TileGrid
from tiled_seg.tiling.join import StitchPlan
from tiled_seg.tiling.stitch import PairMatcher, stitched_array
from tiled_seg.tiling.tissue import empty_tiles, tissue_mask


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
    #: Quality control of the measured cells (:func:`tiled_seg.quality.qc.run_qc`).
    qc: dict[str, Any] = field(default_factory=dict)
    #: Tiles without tissue, not segmented (``tiling.skip_empty``).
    skipped_tiles: int = 0
    #: Things the user should know, e.g. why no table was written.
    notes: tuple[str, ...] = ()

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
            "qc": self.qc,
            "skipped_tiles": self.skipped_tiles,
            "notes": list(self.notes),
        }


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record the stage's wall time (s) in ``timings`` when it finishes."""
    started = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - started


def _slide_stats(
    inputs: Inputs, level_index: int, config: RunConfig, progress: Progress | None
) -> SlideStats:
    """Slide-wide statistics; a damaged chunk is named in a :class:`CorruptChunkError`."""
    slide = inputs.panel_slide
    level = slide.levels[level_index]
    try:
        return compute_slide_stats(
            slide.reader(level=level_index),
            slide.channel_names,
            config.panel.nuclear,
            inputs.membrane,
            low_percentile=config.normalization.low_percentile,
            high_percentile=config.normalization.high_percentile,
            level_index=level_index,
            fixed_range=config.normalization.fixed_range,
            progress=progress,
        )
    except Exception as error:  # codecs and stores raise many types; diagnose, else re-raise
        panel = level[[slide.channel_index(name) for name in inputs.channels]]
        where = f"{slide.path} (pyramid level {level_index})"
        damaged = damaged_chunk(panel, inputs.channels, (0, 0), where, error)
        if damaged is None:
            raise
        raise damaged from error


def _tile_job(inputs: Inputs, config: RunConfig, stats: SlideStats, scratch: str) -> TileJob:
    """What every tile task needs, built once and shipped with each task."""
    return TileJob(
        slide_path=inputs.panel_slide.path,
        pixel_size_um=inputs.pixel_size_um,
        channels=inputs.channels,
        nuclear=config.panel.nuclear,
        membrane=inputs.membrane,
        low=stats.low,
        high=stats.high,
        backend=config.backend.name,
        options=dict(config.backend.options),
        context=SlideContext(
            pixel_size_um=inputs.pixel_size_um,
            nuclear_threshold=stats.nuclear_threshold,
            membrane_threshold=stats.membrane_threshold,
        ),
        scratch=scratch,
        primary=inputs.primary,
    )


def _schedule(config: RunConfig) -> Schedule:
    """How predict tasks are fed, from the cluster section."""
    return Schedule(config.cluster.tiles_per_predict, config.cluster.in_flight_tiles)


def _empty_tiles(inputs: Inputs, plan: Plan, stats: SlideStats, config: RunConfig) -> list[int]:
    """Tiles without tissue on the statistics' pyramid level (none unless ``tiling.skip_empty``)."""
    if not config.tiling.skip_empty:
        return []
    slide = inputs.panel_slide
    reader = slide.reader([slide.channel_index(name) for name in inputs.channels], level=plan.stats_level)
    # One direct read of the coarse level: a dask compute of it took 10x longer.
    block = reader.read(Box(0, reader.shape_yx[0], 0, reader.shape_yx[1]))
    nuclear, membrane = build_inputs(
        block, inputs.channels, config.panel.nuclear, inputs.membrane, stats.low, stats.high
    )
    scale = reader.shape_yx[1] / slide.shape_yx[1]
    fraction = config.tiling.tissue_fraction
    mask = tissue_mask(
        np.nan_to_num(nuclear), None if membrane is None else np.nan_to_num(membrane),
        fraction * stats.nuclear_threshold, fraction * stats.membrane_threshold,
        dilate_px=math.ceil(plan.halo_px * scale) + 1,
    )
    return empty_tiles(plan.grid, mask)


def _label_chunk_px(inputs: Inputs) -> int:
    """Chunk side (px) of the run's label images: the image's smaller chunk side."""
    return min(inputs.slide.chunk_yx)


def _write_labels(
    store: str, scratch: str, inputs: Inputs, grid: TileGrid, plan: StitchPlan,
    results: list[TileResult], progress: Progress | None,
) -> tuple[dict[str, str], int | None]:
    """Write the stitched primary labels, and the linked nuclei when every tile has them.

    Only the full resolution: the run writes the coarser levels
    (:func:`write_label_pyramids`) while it measures. Returns the written
    label paths by kind and the number of nuclei (None when the run has none).
    """
    out_names, primary = inputs.out_names, inputs.primary
    images = {out_names[primary]: stitched_array(ScratchLabels(scratch, "objects"), grid, plan)}
    kinds = [primary]
    n_nuclei: int | None = plan.n_objects if primary == "nuclei" else None
    if primary == "cells" and all(r.core_nucleus_ids is not None for r in results):
        images[out_names["nuclei"]] = stitched_array(ScratchLabels(scratch, "linked"), grid, plan)
        kinds.append("nuclei")
        ids = [plan.luts[r.index][r.core_nucleus_ids] for r in results]
        n_nuclei = int(np.unique(np.concatenate(ids)).size) if ids else 0
    write_label_images(store, images, inputs.pixel_size_um, chunk_px=_label_chunk_px(inputs),
                       overwrite=True, progress=progress, pyramid=False)
    return {kind: f"{store}/labels/{out_names[kind]}" for kind in kinds}, n_nuclei


def _expand_and_measure(
    store: str, inputs: Inputs, plan: Plan, config: RunConfig, labels: dict[str, str],
    progress: Progress | None, h5ad: str | Path | None, timings: dict[str, float],
) -> tuple[dict[str, str], dict[str, Any], tuple[str, ...]]:
    """Expand, measure, REDSEA and QC as configured: the tables, the QC and notes.

    ``labels`` gains ``cells`` when the nuclei are expanded.
    """
    if config.expand_nuclei_um is not None:
        with _timed(timings, "expand"):
            labels["cells"] = _expand(store, inputs, config.expand_nuclei_um, progress)
    if not config.measure:
        return {}, {}, ()
    if "cells" not in labels:
        return {}, {}, (
            "no single-cell table: a nuclear-only run has no cells to measure; set "
            "expand_nuclei_um (e.g. 4) to grow cells from the nuclei, or measure the "
            "nuclei with `tiled-seg measure STORE --labels nuclei --nuclei ''`.",
        )
    with _timed(timings, "measure"):
        measured = _measure(store, inputs, config, labels, progress, h5ad)
    table = measured.table
    if config.redsea:
        with _timed(timings, "redsea"):
            table = _redsea(store, inputs, config)
    qc: dict[str, Any] = {}
    if config.qc.enabled:
        # From the table in memory: the QC does not read the written tables again.
        with _timed(timings, "qc"):
            qc = run_qc(table, plan.grid, inputs.pixel_size_um, config.qc, compensated=config.redsea)
    return dict(measured.paths), qc, ()


def _expand(store: str, inputs: Inputs, radius_um: float, progress: Progress | None) -> str:
    """Grow the nuclei by ``radius_um`` into the cells label image; returns its path."""
    out_names = inputs.out_names
    expand_store(store, source=out_names["nuclei"], target=out_names["cells"],
                 radius_um=radius_um, pixel_size_um=inputs.pixel_size_um,
                 overwrite=True, progress=progress)
    return f"{store}/labels/{out_names['cells']}"


class _MeasurementWarmup:
    """Load the measurement code and kernels on every worker (:func:`warm_block_task`) in the tile tail.

    :meth:`tile_done` is told of every finished tile; once fewer tiles are
    left than there are workers, some worker has no tile to run, and the
    warm-up tasks are submitted (behind the pending tile matches, lower
    priority), so they fill that idle time rather than delay the label write.
    """

    def __init__(self, client: Client, inputs: Inputs, n_tiles: int, enabled: bool) -> None:
        self._client, self._dtype = client, str(inputs.slide.data.dtype)
        self._left, self._enabled = n_tiles, enabled
        self._workers = list(client.scheduler_info()["workers"])
        self.futures: list[Future] = []

    def tile_done(self) -> None:
        """Count a finished tile; start the warm-up once a worker has no tile left."""
        self._left -= 1
        if self._left < len(self._workers):
            self.start()

    def start(self) -> None:
        """Submit the warm-up tasks unless they were submitted already."""
        if not self._enabled or self.futures:
            return
        self.futures = [
            self._client.submit(warm_block_task, self._dtype, pure=False, workers=[address],
                                allow_other_workers=False, priority=-10)
            for address in self._workers
        ]


def _measure(
    store: str, inputs: Inputs, config: RunConfig, labels: dict[str, str],
    progress: Progress | None, h5ad: str | Path | None,
) -> MeasureResult:
    """Measure every cell into the output tables (and ``h5ad``)."""
    out_names = inputs.out_names
    measured = measure_store(
        store,
        labels=out_names["cells"],
        nuclei=out_names["nuclei"] if "nuclei" in labels else None,
        pixel_size_um=inputs.pixel_size_um,
        table_name=config.outputs.table,
        distance_um=config.neighbour_distance_um,
        neighbours=config.neighbours,
        morphology=config.morphology,
        h5ad=h5ad,
        overwrite=True,
        config=config.model_dump(mode="json"),
        image_store=inputs.slide.path,
        progress=progress,
    )
    return measured


def _redsea(store: str, inputs: Inputs, config: RunConfig) -> pd.DataFrame:
    """REDSEA-compensated means into the cell tables (boundary band in um); the updated table."""
    return compensate_store(
        store, table=config.outputs.table, labels=inputs.out_names["cells"],
        element_size=max(1, round(config.redsea_boundary_um / inputs.pixel_size_um)),
        image_store=inputs.slide.path,
    )


def _finish(store: str, scratch: str, result: RunResult) -> None:
    """Mark the run complete, then drop its scratch.

    The scratch is kept until now, so a run killed in expand or measure
    resumes after stitching.
    """
    mark_complete(store, result.to_summary())
    remove_tree(scratch)


def run(
    slide_path: str | Path,
    config: RunConfig,
    *,
    output: str | Path | None = None,
    client: Client | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    resume: bool = False,
    h5ad: str | Path | None = None,
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
        Where tasks run, including every dask computation of the run (statistics,
        label writes, expansion, measurement) whatever dask's default scheduler is;
        default a local cluster (one worker per core).
    overwrite : bool
        Replace existing labels of the same names.
    progress : callable, optional
        Called as ``progress(stage, done, total)`` while tiles finish.
    resume : bool
        Continue an interrupted run of the same input and configuration in
        the output store: tiles recorded in its scratch manifest are not
        segmented again, and the labels are identical to an uninterrupted
        run. Without an interrupted run this starts a new one.
    h5ad : str or Path, optional
        Also write the cell table as an AnnData ``.h5ad`` file.

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
        # Mistakes surface before the cluster's start-up, not after it.
        check_run(slide_path, config, output=output, overwrite=overwrite, resume=resume,
                  h5ad=h5ad)
        with connect(config=config.cluster) as local:
            return run(slide_path, config, output=output, client=local,
                       overwrite=overwrite, progress=progress, resume=resume, h5ad=h5ad)
    timings: dict[str, float] = {}
    # dask computes on its global default scheduler unless told otherwise,
    # and the caller's client need not be that default.
    started = time.perf_counter()
    inputs = open_inputs(slide_path, config)
    plan = plan_run(inputs, config)
    if h5ad is not None:
        check_h5ad(Path(h5ad), inputs, config, overwrite)
    target = output_store(inputs.slide, None if output is None else str(output))
    with computing_on(client), run_lock(target):
        store = start_output(inputs.slide, None if output is None else str(output),
                             inputs.written_names, config, overwrite=overwrite,
                             resume=resume, input_key=plan.input_key)
        timings["open"] = time.perf_counter() - started
        try:
            result = _stages(store, inputs, plan, config, client, progress, resume, timings, h5ad)
        except Exception as error:
            # An interrupt (KeyboardInterrupt) stays "running": that run resumes. A store
            # that cannot take the record (a full disk) must not hide the error itself.
            with contextlib.suppress(OSError):
                mark_failed(store, error)
            raise
    return result


def _stages(
    store: str, inputs: Inputs, plan: Plan, config: RunConfig, client: Client,
    progress: Progress | None, resume: bool, timings: dict[str, float],
    h5ad: str | Path | None,
) -> RunResult:
    """Statistics to measurement (and QC) into the prepared ``store``; marks it complete."""
    with _timed(timings, "stats"):
        stats = _slide_stats(inputs, plan.stats_level, config, progress)
        update_state(store, stats=stats.to_dict(), grid=plan.grid)
    scratch, done = prepare_scratch(store, plan.input_key, stats, plan.grid, plan.halo_px, resume)
    job = _tile_job(inputs, config, stats, scratch)
    skipped = _empty_tiles(inputs, plan, stats, config)
    matcher = PairMatcher(client, ScratchLabels(scratch, "objects"), plan.grid,
                          config.tiling.min_overlap, skipped)
    # Fire and forget: released after the label write; a failure there
    # would fail the measure stage's own tasks the same way.
    warmup = _MeasurementWarmup(client, inputs, len(plan.grid.tiles), config.measure)

    def tile_done(result: TileResult) -> None:
        matcher.add(result.index)
        warmup.tile_done()

    with _timed(timings, "segment"):
        results = segment_tiles(client, job, plan.grid, progress, done, skip=skipped,
                                on_tile=tile_done, schedule=_schedule(config))
    warmup.start()
    with _timed(timings, "stitch"):
        stitch = matcher.plan([r.core_ids for r in results])
    with _timed(timings, "write"):
        labels, n_nuclei = _write_labels(store, scratch, inputs, plan.grid, stitch, results, progress)
    del warmup
    # The coarser levels are written on a thread while the nuclei are expanded
    # and the cells measured, which read only the full resolution. The thread
    # runs in a copy of this context, where the run's client is current.
    with ThreadPoolExecutor(max_workers=1) as pyramid_writer:
        written = [inputs.out_names[kind] for kind in labels]
        pyramid = pyramid_writer.submit(
            contextvars.copy_context().run, write_label_pyramids, store, written,
            chunk_px=_label_chunk_px(inputs), progress=progress,
        )
        tables, qc, notes = _expand_and_measure(store, inputs, plan, config, labels, progress, h5ad, timings)
        with _timed(timings, "pyramid"):
            pyramid.result()
    result = RunResult(
        store=str(store),
        labels=labels,
        tables=tables,
        n_cells=stitch.n_objects if "cells" in labels else 0,
        n_nuclei=n_nuclei,
        n_tiles=len(plan.grid.tiles),
        tile_px=plan.grid.tile_px[0],
        halo_px=plan.halo_px,
        timings=timings,
        segment_seconds=float(sum(r.segment_seconds for r in results)),
        stitch=stitch.stats(),
        nonfinite_px=sum(r.nonfinite_px for r in results),
        nonfinite_tiles={r.index: r.nonfinite_px for r in results if r.nonfinite_px},
        resumed_tiles=len(done),
        qc=qc,
        skipped_tiles=len(skipped),
        notes=notes,
    )
    _finish(store, scratch, result)
    return result
