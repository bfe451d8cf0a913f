"""Interrupted runs: SIGKILL at any moment, marked incomplete, resumed to identical labels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from distributed import Client, LocalCluster

from tiled_seg._cli import main
from tiled_seg.config import RunConfig
from tiled_seg.errors import OutputExistsError, ResumeError
from tiled_seg.io.ngff import list_labels, read_labels
from tiled_seg.pipeline import _run, run
from tiled_seg.pipeline.state import count_records, read_records, scratch_path

SIZE = 128
CHUNK = 32
TILE = 32
N_TILES = (SIZE // TILE) ** 2
CLI = str(Path(sys.executable).with_name("tiled-seg"))


class Crash(Exception):
    """Stands for the client process dying at a chosen moment."""


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def slide(small_slide):
    assert small_slide.shape[1:] == (SIZE, SIZE)
    return small_slide


def _config(**changes) -> RunConfig:
    return RunConfig(measure=False).with_overrides(**{"tiling.tile_px": TILE, **changes})


@pytest.fixture(scope="module")
def clean(tmp_path_factory, slide, client):
    output = tmp_path_factory.mktemp("clean") / "clean.zarr"
    started = time.perf_counter()
    run(slide.path, _config(), output=output, client=client)
    print(f"clean run: {time.perf_counter() - started:.2f} s")
    return {name: read_labels(output, name).compute() for name in ("cells", "nuclei")}


def _status(store: Path) -> str | None:
    return zarr.open_group(store, mode="r").attrs.get("tiled_seg", {}).get("status")


def _assert_identical(store: Path, clean: dict[str, np.ndarray]) -> None:
    for name, expected in clean.items():
        got = read_labels(store, name).compute()
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes(), f"{name} differ from the clean run"
    assert _status(store) == "complete"
    assert not Path(scratch_path(str(store))).exists()


def _info(store: Path) -> str:
    result = CliRunner().invoke(main, ["info", str(store)])
    assert result.exit_code == 0, result.output
    return result.output


def _resume(slide, store: Path, client, config: Path) -> str:
    result = CliRunner().invoke(main, [
        "run", str(slide.path), "--output", str(store), "--tile-size", str(TILE),
        "--config", str(config), "--scheduler", client.scheduler.address, "--resume",
    ])
    assert result.exit_code == 0, result.output
    return result.output


def _tiles_recorded(store: Path) -> bool:
    counts = count_records(scratch_path(str(store)))
    return counts is not None and counts[0] >= 2


def _store_running(store: Path) -> bool:
    return (store / "zarr.json").exists() and _status(store) == "running"


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["tiles", "start"])
def test_sigkill_then_resume_gives_identical_labels(tmp_path, slide, client, clean, phase):
    store = tmp_path / "out.zarr"
    # Own process group, so the kill takes the CLI and its local cluster's workers at once.
    log = tmp_path / "run.log"
    where = ["--workers", "1"] if phase == "tiles" else ["--scheduler", client.scheduler.address]
    process = subprocess.Popen(
        [CLI, "run", str(slide.path), "--output", str(store), "--tile-size", str(TILE),
         "--config", str(_no_measure_config(tmp_path)), *where],
        stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
    )
    ready = _tiles_recorded if phase == "tiles" else _store_running
    deadline = time.monotonic() + 60
    try:
        while not ready(store):
            assert process.poll() is None, f"the run ended before the kill: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the run never reached the phase to kill in"
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    recorded = read_records(scratch_path(str(store)))
    assert len(recorded) < N_TILES, "the run finished before the kill; the test proves nothing"
    assert _status(store) == "running"
    assert "INCOMPLETE" in _info(store)

    started = time.perf_counter()
    output = _resume(slide, store, client, _no_measure_config(tmp_path))
    print(f"{phase}: killed with {len(recorded)} of {N_TILES} tiles recorded; "
          f"resume {time.perf_counter() - started:.2f} s")
    # Orphaned tasks may have recorded more tiles after the kill, never fewer.
    assert ("resumed:" in output) == bool(read_records(scratch_path(str(store))) or recorded)
    _assert_identical(store, clean)
    assert "INCOMPLETE" not in _info(store)


def _no_measure_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("measure: false\n")
    return path


def _crash_after(n_tiles: int):
    def progress(stage: str, done: int, total: int) -> None:
        if stage == "segment" and done >= n_tiles:
            raise Crash
    return progress


@pytest.mark.slow
def test_resume_reuses_recorded_tiles_and_refuses_other_configs(
    tmp_path, slide, client, clean, monkeypatch
):
    store = tmp_path / "out.zarr"
    with pytest.raises(Crash):
        run(slide.path, _config(), output=store, client=client, progress=_crash_after(3))
    recorded = read_records(scratch_path(str(store)))
    assert 3 <= len(recorded) < N_TILES
    some = recorded[min(recorded)]
    assert some.core_ids.dtype == np.int64 and some.segment_seconds > 0

    with pytest.raises(ResumeError, match="different input or configuration"):
        run(slide.path, _config(**{"tiling.min_overlap": 0.6}), output=store, client=client,
            resume=True)
    # The refusal keeps the scratch (tiles still running when the client died may add records).
    assert read_records(scratch_path(str(store))).keys() >= recorded.keys()
    assert _status(store) == "failed"   # the crash raised an exception: recorded, resumable

    result = run(slide.path, _config(), output=store, client=client, resume=True)
    assert result.resumed_tiles >= len(recorded)
    _assert_identical(store, clean)

    with pytest.raises(OutputExistsError, match="nothing to resume"):
        run(slide.path, _config(), output=store, client=client, resume=True)
    assert _status(store) == "complete"

    # Overwriting a complete result marks it running before any label is touched.
    seen = []
    real = _run.write_label_images

    def spy(store_path, *args, **kwargs):
        seen.append(_status(Path(store_path)))
        return real(store_path, *args, **kwargs)

    monkeypatch.setattr(_run, "write_label_images", spy)
    run(slide.path, _config(), output=store, client=client, overwrite=True)
    assert seen and set(seen) == {"running"}
    state = zarr.open_group(store, mode="r").attrs["tiled_seg"]
    assert state["status"] == "complete" and state["summary"]["resumed_tiles"] == 0


@pytest.mark.slow
def test_interrupted_label_write_is_marked_and_resumed(tmp_path, slide, client, clean, monkeypatch):
    store = tmp_path / "out.zarr"
    real = _run.write_label_images
    calls = []

    def write_then_die(*args, **kwargs):
        calls.append(args[1])
        real(*args, **kwargs)
        if len(calls) == 1:
            raise Crash

    monkeypatch.setattr(_run, "write_label_images", write_then_die)
    with pytest.raises(Crash):
        run(slide.path, _config(), output=store, client=client)
    monkeypatch.setattr(_run, "write_label_images", real)
    # Labels exist but the store says the run did not finish.
    assert "cells" in list_labels(store)
    assert _status(store) == "failed"
    info = _info(store)
    assert "FAILED" in info and "not a result" in info and f"tiles recorded: {N_TILES} of {N_TILES}" in info
    result = run(slide.path, _config(), output=store, client=client, resume=True)
    assert result.resumed_tiles == N_TILES
    _assert_identical(store, clean)
