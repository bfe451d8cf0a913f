"""One measurement block task, step by step, in one process (median of repeats).

Usage::

    python benchmarks/bench_block.py /tmp/bench_slides/bench_4096x16.ome.zarr

The slide must have ``labels/cells`` and ``labels/nuclei`` (run
``bench_run.py --keep DIR`` first). Prints the seconds of each read and
kernel of the block at (1024, 1024) of side 1024 px, and of the whole
``measure_block_task``, which is what a worker runs per block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_chunks import median_s  # noqa: E402

from tiled_seg.io.ngff import label_array, open_slide  # noqa: E402
from tiled_seg.io.regions import RegionReader  # noqa: E402
from tiled_seg.measure import MeasureJob, block_partials, perimeter_partials, touching_pairs  # noqa: E402
from tiled_seg.measure._blocks import measure_block_task  # noqa: E402
from tiled_seg.tiling import Box  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    slide = open_slide(args.slide)
    job = MeasureJob(RegionReader(label_array(args.slide, "cells")), slide.reader(),
                     RegionReader(label_array(args.slide, "nuclei")))
    block = Box(1024, 2048, 1024, 2048)
    window = block.grow(job.halo_px, job.labels.shape_yx)
    core = block.relative_to(window)
    labels, image, nuclei = job.labels.read(window), job.image.read(block), job.nuclei.read(block)
    block_partials(labels[core.slices], image, (0, 0), nuclei)  # compile / load the kernels once
    perimeter_partials(labels, core)
    touching_pairs(labels[core.grow(1, labels.shape).slices])
    steps = {
        "read_labels_s": lambda: job.labels.read(window),
        "read_image_s": lambda: job.image.read(block),
        "read_nuclei_s": lambda: job.nuclei.read(block),
        "cell_partials_s": lambda: block_partials(labels[core.slices], image, (0, 0), nuclei),
        "perimeter_s": lambda: perimeter_partials(labels, core),
        "touching_s": lambda: touching_pairs(labels[core.grow(1, labels.shape).slices]),
        "block_task_s": lambda: measure_block_task(job, block),
    }
    print(" ".join(f"{name}={median_s(step, args.repeats):.3f}" for name, step in steps.items()))


if __name__ == "__main__":
    main()
