"""Stage benchmark: a default run (measurement on) next to its floors, same process, same slide.

Usage::

    python benchmarks/bench_run.py --sizes 4096 8192 --channels 16 --workers 2 --keep /tmp/bench_slides

For each size it synthesizes a slide (not timed; ``--keep DIR`` reuses one),
runs ``tiled_seg.pipeline.run`` with the default configuration (watershed,
measurement on, default morphology) on a LocalCluster and prints every
stage's wall time, the segmenter time (sum over tiles / workers), and,
measured right after in the same process, the floors:

- ``read_zarr_s``: the whole image read by zarr in this process, one call;
- ``dask_sum_s``: a plain dask sum of the image on the same cluster (one
  task per chunk per channel, the pattern the block tasks replace);
- ``blocks_s``: the measure stage's block pass alone on the same cluster
  (intensities, compartments, shape partials, touching pairs), i.e. the
  measure stage without building and writing the tables;
- ``rp_intensity_s``: ``regionprops_table`` (label, area, centroid,
  intensity_mean) on the loaded labels and image, one process;
- ``rp_morphology_s``: ``regionprops_table`` (perimeter, eccentricity,
  solidity, axis lengths) on the loaded labels, one process;
- ``our_morphology_s``: our default shape kernels (perimeter, moments) on
  the same loaded labels, one process.

The block pass and the zarr read, whose ratio is the closest to its goal,
are timed ``--repeats`` times, alternating, and their medians reported (the
host's load moves both alike); the other floors once.

Ratios are the figures to read: ``measure / segment`` (goal <= 1),
``measure / read_zarr`` and ``blocks / read_zarr`` (goal <= 1.5), ``our_morphology / rp_morphology``
(goal <= 1), ``wall / segmenter`` (goal <= 2), and ``floor_over_segmenter``, the
best wall / segmenter this machine allows for the same work
(``bench_pipeline.CoreSeconds``). Peak memory is the summed
RSS of this process and its workers during the run; ``peak_process_gib`` the
largest single process (client or worker; the client grows with the cells).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from skimage.measure import regionprops_table

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import CoreSeconds, PeakMemory, bench_slide, print_row, slide_folder  # noqa: E402

from tiled_seg.cluster import connect  # noqa: E402
from tiled_seg.config import RunConfig  # noqa: E402
from tiled_seg.io.ngff import label_array, open_slide  # noqa: E402
from tiled_seg.io.regions import RegionReader  # noqa: E402
from tiled_seg.measure import (  # noqa: E402
    MeasureJob,
    block_partials,
    measure_blocks,
    moment_features,
    perimeter_partials,
)
from tiled_seg.pipeline import run  # noqa: E402
from tiled_seg.tiling import Box  # noqa: E402


def _timed(function):
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def _our_morphology(labels: np.ndarray) -> None:
    whole = Box(0, labels.shape[0], 0, labels.shape[1])
    perimeter_partials(labels, whole)
    moment_features(block_partials(labels, np.zeros((0, *labels.shape)), (0, 0)))


def bench(size: int, channels: int, workers: int, tile_px: int, folder: Path, floors: bool,
          repeats: int) -> dict:
    path = bench_slide(folder, size, channels)
    config = RunConfig().with_overrides(**{"tiling.tile_px": tile_px})
    row: dict = {"size": size, "channels": channels, "workers": workers}
    with connect(workers=workers) as client:
        with PeakMemory() as memory, CoreSeconds(client) as cores:
            wall, result = _timed(lambda: run(path, config, client=client, overwrite=True))
        row.update(tiles=result.n_tiles, cells=result.n_cells, wall_s=wall,
                   segmenter_s=result.segment_seconds / workers,
                   **cores.figures(wall, result.segment_seconds / workers),
                   peak_total_gib=memory.peak_total / 2**30,
                   peak_process_gib=memory.peak_single / 2**30)
        row.update({f"{k}_s": v for k, v in result.timings.items()})
        slide = open_slide(path)
        if floors:
            row["dask_sum_s"], _ = _timed(lambda: slide.data.sum().compute())
            job = MeasureJob(RegionReader(label_array(path, "cells")), slide.reader(),
                             RegionReader(label_array(path, "nuclei")))
            blocks, reads = [], []
            for _ in range(repeats):
                blocks.append(_timed(lambda: measure_blocks(job))[0])
                reads.append(_timed(lambda: np.asarray(slide.source[...]))[0])
            row["blocks_s"], row["read_zarr_s"] = float(np.median(blocks)), float(np.median(reads))
    if floors:
        image = np.asarray(slide.source[...])
        labels = np.asarray(label_array(path, "cells")[...])
        row["rp_intensity_s"], _ = _timed(lambda: regionprops_table(
            labels, intensity_image=np.moveaxis(image, 0, -1),
            properties=("label", "area", "centroid", "intensity_mean")))
        del image
        row["rp_morphology_s"], _ = _timed(lambda: regionprops_table(
            labels, properties=("label", "perimeter", "eccentricity", "solidity",
                                "axis_major_length", "axis_minor_length")))
        row["our_morphology_s"], _ = _timed(lambda: _our_morphology(labels))
        row["measure_over_read"] = row["measure_s"] / row["read_zarr_s"]
        row["blocks_over_read"] = row["blocks_s"] / row["read_zarr_s"]
        row["our_over_rp_morphology"] = row["our_morphology_s"] / row["rp_morphology_s"]
    row["measure_over_segment"] = row["measure_s"] / row["segment_s"]
    row["wall_over_segmenter"] = row["wall_s"] / row["segmenter_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tile-px", type=int, default=1024)
    parser.add_argument("--no-floors", action="store_true", help="Skip the single-process floors.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Times the block pass and the zarr read are timed (median).")
    parser.add_argument("--keep", type=Path, help="Keep slides in this folder.")
    args = parser.parse_args()
    with slide_folder(args.keep) as folder:
        for size in args.sizes:
            print_row(bench(size, args.channels, args.workers, args.tile_px, folder, not args.no_floors,
                            args.repeats))


if __name__ == "__main__":
    main()
