"""Worker faults: a worker process killed mid-run, and idempotent tile writes."""

from __future__ import annotations

import os
import signal

import dask
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from tiled_seg.config import RunConfig
from tiled_seg.io.ngff import read_labels
from tiled_seg.pipeline import run
from tiled_seg.pipeline.state import create_scratch, write_scratch
from tiled_seg.synth import make_slide
from tiled_seg.tiling import plan_tiles

SIZE = 128
TILE = 32


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("slides") / "slide.ome.zarr",
                      size=(SIZE, SIZE), seed=9, chunk_px=32)


def _config() -> RunConfig:
    return RunConfig(measure=False).with_overrides(**{"tiling.tile_px": TILE})


@pytest.mark.slow
def test_killed_worker_does_not_fail_the_run(tmp_path, slide):
    # Each tile may be lost with a worker a few times before the run fails.
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}), LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        clean = tmp_path / "clean.zarr"
        run(slide.path, _config(), output=clean, client=client)
        killed: list[tuple[int, int]] = []

        def kill_a_busy_worker(stage: str, done: int, total: int) -> None:
            if stage != "segment" or killed or done < 2:
                return
            busy = {w: tasks for w, tasks in client.processing().items() if tasks}
            if not busy:
                return
            address = sorted(busy)[0]
            pid = client.run(os.getpid, workers=[address])[address]
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, len(busy[address])))

        faulty = tmp_path / "faulty.zarr"
        result = run(slide.path, _config(), output=faulty, client=client,
                     progress=kill_a_busy_worker)
        assert killed, "no worker was busy when tiles finished; nothing was killed"
        pid, in_flight = killed[0]
        print(f"killed worker pid {pid} with {in_flight} tile task(s) in flight")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert result.n_tiles == (SIZE // TILE) ** 2
        for name in ("cells", "nuclei"):
            assert (read_labels(faulty, name).compute().tobytes()
                    == read_labels(clean, name).compute().tobytes())


def test_tile_write_is_idempotent_and_replaces_a_damaged_chunk(tmp_path):
    grid = plan_tiles((100, 100), 64, 8, (32, 32))
    edge = grid.tiles[-1]  # smaller than the scratch chunk
    scratch = str(tmp_path / "scratch.zarr")
    create_scratch(scratch, "key", (len(grid.tiles), 80, 80), len(grid.tiles))
    labels = np.random.default_rng(0).integers(0, 50, size=edge.halo.shape).astype(np.int32)
    chunk_file = tmp_path / "scratch.zarr" / "objects" / "c" / str(edge.index) / "0" / "0"

    write_scratch(scratch, "objects", edge, labels)
    first = chunk_file.read_bytes()
    write_scratch(scratch, "objects", edge, labels)
    assert chunk_file.read_bytes() == first

    # A task killed mid-write on a store without atomic writes could leave garbage.
    chunk_file.write_bytes(b"\x00garbage")
    write_scratch(scratch, "objects", edge, labels)
    assert chunk_file.read_bytes() == first
    stored = zarr.open_array(f"{scratch}/objects", mode="r")[edge.index]
    height, width = edge.halo.shape
    assert np.array_equal(stored[:height, :width], labels)
    assert not stored[height:].any() and not stored[:, width:].any()
