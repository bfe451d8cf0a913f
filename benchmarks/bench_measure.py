"""Benchmark per-cell aggregation against the read floor and a single process.

Generates a synthetic ``S x S`` slide (16 uint16 channels, ~20 px cells that
cross chunk borders) chunked on disk as zarr, then times on a 2-worker local
cluster:

- ``floor``: a plain dask sum of every channel (reading the same chunks);
- ``ours``: :func:`tiled_seg.measure.aggregate_cells` (counts, sums,
  centroids, boxes per cell);

(alternating, best of ``--repeat``) and, in one process, ``skimage.measure.regionprops_table`` with area,
centroid and intensity_mean on the arrays loaded into memory (load time
reported separately). Peak memory is the largest summed RSS of this process
and its workers, sampled every 50 ms.

Run: ``python benchmarks/bench_measure.py [--size 8192] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import psutil
from distributed import Client, LocalCluster
from skimage.measure import regionprops_table

from tiled_seg.measure import aggregate_cells

CHANNELS = 16
CELL_PX = 20


def _labels_block(block_info=None) -> np.ndarray:
    """Staggered ~20 px cells with ids by row and column (every id > 0)."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    size = block_info[None]["shape"][1]
    yy = np.arange(y0, y1)[:, None]
    xx = np.arange(x0, x1)[None, :]
    row = yy // CELL_PX
    col = (xx + (row % 2) * (CELL_PX // 2)) // CELL_PX
    return (row * (size // CELL_PX + 2) + col + 1).astype(np.uint32)


def generate(path: Path, size: int, chunk: int) -> None:
    labels = da.map_blocks(
        _labels_block, chunks=((chunk,) * (size // chunk),) * 2, dtype=np.uint32
    )
    labels = da.where(labels % 5 == 0, 0, labels).astype(np.uint32)
    rng = da.random.default_rng(0)
    image = rng.integers(0, 256, (CHANNELS, size, size), chunks=(1, chunk, chunk), dtype=np.uint16)
    da.to_zarr(labels, str(path / "labels"), overwrite=True)
    da.to_zarr(image, str(path / "image"), overwrite=True)


class PeakRSS:
    """Largest summed RSS (bytes) of this process and its children while active."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timed(label: str, func):
    with PeakRSS() as memory:
        start = time.perf_counter()
        result = func()
        seconds = time.perf_counter() - start
    print(f"{label:<28} {seconds:8.2f} s   peak RSS {memory.peak / 2**30:6.2f} GiB")
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="slide side (px)")
    parser.add_argument("--chunk", type=int, default=512, help="zarr chunk side (px)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the zarr data")
    parser.add_argument("--repeat", type=int, default=3, help="alternating timed runs")
    parser.add_argument("--skip-single", action="store_true", help="skip the single-process run")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_measure_", dir=args.workdir))
    try:
        start = time.perf_counter()
        with dask.config.set(scheduler="threads", num_workers=args.workers):
            generate(workdir, args.size, args.chunk)
        print(f"generated {args.size}^2 x {CHANNELS} ch in {time.perf_counter() - start:.1f} s at {workdir}")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
            labels = da.from_zarr(str(workdir / "labels"))
            image = da.from_zarr(str(workdir / "image"))
            # Alternate the two, keep the best of each: the machine is shared.
            floors, ours_runs = [], []
            for _ in range(args.repeat):
                floors.append(_timed("read floor (dask sum)", lambda: image.sum(axis=(1, 2)).compute())[0])
                seconds, sums = _timed("ours (aggregate_cells)", lambda: aggregate_cells(labels, image))
                ours_runs.append(seconds)
            floor, ours = min(floors), min(ours_runs)
        print(f"cells: {len(sums['label'])}")
        print(f"ours / read floor: {ours / floor:.2f}")
        if not args.skip_single:
            load, (lab, img) = _timed(
                "single: load arrays", lambda: (labels.compute(), image.compute().transpose(1, 2, 0))
            )
            single, _ = _timed(
                "single: regionprops_table",
                lambda: regionprops_table(
                    lab, intensity_image=img, properties=("label", "area", "centroid", "intensity_mean")
                ),
            )
            print(f"single-process / ours: {single / ours:.2f} (excluding its {load:.1f} s load)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
