"""Region reads of a channel list: zarr's orthogonal selection against ``read_region``.

Usage::

    python benchmarks/bench_region_reads.py --slide /tmp/bench_slides/bench_4096x16.ome.zarr

Times, in one process, reading every 1024 px block of the slide (a
measurement block task's read) and every tile's halo box (1024 px plus a
25 px halo, a tile task's read), for three channel lists: all channels,
the first four (a consecutive panel) and four scattered ones. Each read is
done two ways: ``array.oindex[channels, rows, columns]`` (zarr's
orthogonal selection, what ``read_region`` did before) and
``tiled_seg.io.regions.read_region`` (one slice selection per run of
consecutive channels). Prints the median of ``--repeats`` passes (s) and
their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_chunks import median_s  # noqa: E402

from tiled_seg.io.ngff import open_slide  # noqa: E402
from tiled_seg.io.regions import read_region  # noqa: E402
from tiled_seg.tiling import plan_blocks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--block-px", type=int, default=1024)
    parser.add_argument("--halo-px", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    slide = open_slide(args.slide)
    array, axes = slide.source, slide.axes
    n_channels, (height, width) = array.shape[axes.index("c")], slide.shape_yx
    blocks = plan_blocks((height, width), slide.chunk_yx, args.block_px)
    halo = args.halo_px
    halo_boxes = [
        (slice(max(b.y0 - halo, 0), min(b.y1 + halo, height)), slice(max(b.x0 - halo, 0), min(b.x1 + halo, width)))
        for b in blocks
    ]
    lists = {
        "all": list(range(n_channels)),
        "first4": list(range(min(4, n_channels))),
        "scattered4": sorted({round(i) for i in np.linspace(0, n_channels - 1, 4)}),
    }
    for kind, boxes in (("blocks", [b.slices for b in blocks]), ("tile_halo_boxes", halo_boxes)):
        for name, channels in lists.items():
            where = {"c": channels}

            def orthogonal() -> None:
                for rows, columns in boxes:
                    where.update(y=rows, x=columns)
                    array.oindex[tuple(where.get(axis, 0) for axis in axes)]

            def ours() -> None:
                for rows, columns in boxes:
                    read_region(array, axes, rows, columns, channels)

            before, now = median_s(orthogonal, args.repeats), median_s(ours, args.repeats)
            print(f"reads={kind} channels={name} n={len(boxes)} oindex_s={before:.3f} "
                  f"read_region_s={now:.3f} ratio={before / now:.2f}", flush=True)


if __name__ == "__main__":
    main()
