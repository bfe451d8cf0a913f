"""Whole-slide pipeline benchmark: wall time vs time inside the segmenter.

Usage::

    python benchmarks/bench_pipeline.py --sizes 4096 8192 --channels 16 --workers 2

For each size it synthesizes a slide (not timed; with ``--keep DIR`` a slide
already in DIR is reused), runs ``tiled_seg.pipeline.run``
on a LocalCluster and prints: wall time of the run, segmenter time (sum of the
per-tile ``segment`` calls divided by the number of workers, i.e. the wall time a
perfectly parallel run would spend segmenting), their ratio, and the peak
resident memory of all processes (this one plus its workers), sampled every
0.1 s. The goal: wall / segmenter <= 1.15, and peak memory independent of the
slide size.

It also prints what the machine allows (:class:`CoreSeconds`): ``busy_s``,
the seconds workers spent running tasks, plus ``client_cpu_s``, the CPU
time of this process (the client and the local scheduler), spread over the
machine's cores, is ``floor_s``: the wall time of a run that kept every core
busy from start to end. ``floor_over_segmenter`` is the best
wall / segmenter ratio this machine can reach with the work as it is;
``wall_over_floor`` how far the run's scheduling is from it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil
from distributed import get_task_stream

from tiled_seg.cluster import connect
from tiled_seg.config import RunConfig
from tiled_seg.pipeline import run
from tiled_seg.synth import make_slide


class PeakMemory:
    """Samples the summed RSS of this process and its children."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak_total = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            sizes = []
            for process in [me, *me.children(recursive=True)]:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:
                    pass
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_single = max(self.peak_single, max(sizes, default=0))
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CoreSeconds:
    """Core-seconds a block of code used: workers' task time and this process's CPU time."""

    def __init__(self, client) -> None:
        self._stream = get_task_stream(client)
        self.busy_s = self.client_cpu_s = 0.0

    def __enter__(self) -> "CoreSeconds":
        self._stream.__enter__()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client_cpu_s = time.process_time() - self._cpu
        self._stream.__exit__(*exc)
        self.busy_s = sum(
            span["stop"] - span["start"]
            for task in self._stream.data for span in task["startstops"] if span["action"] == "compute"
        )

    def figures(self, wall_s: float, segmenter_s: float) -> dict[str, float]:
        """The floor figures of a run of ``wall_s`` whose segmenter time is ``segmenter_s``."""
        floor = (self.busy_s + self.client_cpu_s) / (os.cpu_count() or 1)
        return {"busy_s": self.busy_s, "client_cpu_s": self.client_cpu_s, "floor_s": floor,
                "floor_over_segmenter": floor / segmenter_s, "wall_over_floor": wall_s / floor}


def bench_slide(folder: Path, size: int, channels: int) -> Path:
    """The synthetic ``size`` x ``size`` slide of ``channels`` in ``folder``, made once (not timed)."""
    path = folder / f"bench_{size}x{channels}.ome.zarr"
    if not path.exists():
        make_slide(path, size=(size, size), n_channels=channels, seed=1)
    return path


@contextlib.contextmanager
def slide_folder(keep: Path | None) -> Iterator[Path]:
    """``keep`` (created if needed and kept), or a temporary folder removed afterwards."""
    folder = keep or Path(tempfile.mkdtemp(prefix="tiled_seg_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def print_row(row: dict) -> None:
    """One line of ``key=value`` figures, floats to 2 decimals."""
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          flush=True)


def bench(size: int, channels: int, workers: int, tile_px: int, folder: Path) -> dict[str, float]:
    path = bench_slide(folder, size, channels)
    config = RunConfig(measure=False).with_overrides(**{"tiling.tile_px": tile_px})
    with connect(workers=workers) as client:
        with PeakMemory() as memory, CoreSeconds(client) as cores:
            started = time.perf_counter()
            result = run(path, config, client=client, overwrite=True)
            wall = time.perf_counter() - started
    segmenter = result.segment_seconds / workers
    return {
        "size": size,
        "tiles": result.n_tiles,
        "cells": result.n_cells,
        "wall_s": wall,
        "segmenter_s": segmenter,
        "ratio": wall / segmenter,
        **cores.figures(wall, segmenter),
        "peak_total_gib": memory.peak_total / 2**30,
        "peak_process_gib": memory.peak_single / 2**30,
        **{f"{k}_s": v for k, v in result.timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tile-px", type=int, default=1024)
    parser.add_argument("--keep", type=Path, help="Keep slides in this folder.")
    args = parser.parse_args()
    with slide_folder(args.keep) as folder:
        for size in args.sizes:
            print_row(bench(size, args.channels, args.workers, args.tile_px, folder))


if __name__ == "__main__":
    main()
