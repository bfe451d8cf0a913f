"""Read throughput of one image stored with different zarr chunk shapes.

Usage::

    python benchmarks/bench_chunks.py --slide /tmp/bench_slides/bench_4096x16.ome.zarr

Copies the slide's full-resolution ``(C, Y, X)`` array into temporary zarr
arrays with each chunk shape (same codecs as tiled_seg writes), then times,
in one process, the two reads the pipeline makes: the whole image in one
call, and block reads (every channel of a 1024 x 1024 block, as a tile or
measurement task reads it), and a single-channel tile read (a segmentation
task reading the nuclear channel). Prints MiB/s and the store's size. The
median of ``--repeats`` runs is reported.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from tiled_seg.io.ngff import open_slide
from tiled_seg.tiling import plan_blocks

SHAPES = ((1, 256, 256), (1, 512, 512), (1, 1024, 1024), ("C", 256, 256), ("C", 512, 512))


def _size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def median_s(function, repeats: int) -> float:
    """Median wall time (s) of ``repeats`` calls of ``function``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--block-px", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = open_slide(args.slide).source
    image = np.asarray(source[...])
    channels, height, width = image.shape
    mib = image.nbytes / 2**20
    folder = Path(tempfile.mkdtemp(prefix="tiled_seg_chunks_"))
    try:
        for shape in SHAPES:
            chunks = tuple(channels if c == "C" else c for c in shape)
            path = folder / "x".join(map(str, chunks))
            array = zarr.create_array(str(path), shape=image.shape, chunks=chunks, dtype=image.dtype,
                                      compressors=source.compressors)
            array[...] = image
            blocks = plan_blocks((height, width), chunks[1:], args.block_px)
            whole = median_s(lambda: array[...], args.repeats)
            block = median_s(lambda: [array[(slice(None), *b.slices)] for b in blocks], args.repeats)
            one = median_s(lambda: [array[(0, *b.slices)] for b in blocks], args.repeats)
            print(f"chunks={'x'.join(map(str, chunks))} size_mib={_size_mib(path):.0f} "
                  f"whole_mib_s={mib / whole:.0f} blocks_mib_s={mib / block:.0f} "
                  f"one_channel_blocks_s={one:.3f}", flush=True)
            shutil.rmtree(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
