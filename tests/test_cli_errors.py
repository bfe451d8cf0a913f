"""A newcomer's mistakes: each is one line naming the fix, exit code 2, no traceback, nothing written.

Also the run state around failures (``failed`` with the error; a retry needs
no ``--overwrite``), the lock against two runs writing one output, Ctrl-C
during the tiles (exit 130) and a backend failing inside a worker.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from tiled_seg import pipeline
from tiled_seg._cli import main
from tiled_seg.config import RunConfig
from tiled_seg.errors import OutputExistsError, RunLockedError
from tiled_seg.io.ngff import list_labels, write_labels
from tiled_seg.pipeline._lock import lock_path, run_lock
from tiled_seg.pipeline.state import SCRATCH_SUFFIX
from tiled_seg.synth import make_slide

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
CHUNK = 32


@pytest.fixture(scope="module")
def slide(small_slide):
    assert small_slide.shape[1:] == (SIZE, SIZE)
    return small_slide


def _tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _one_line_error(args: list[str]) -> str:
    """Run the CLI in-process; assert exit 2, no traceback, one line; return that line."""
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exc_info[0] is SystemExit
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def _imc_like(tmp_path: Path) -> Path:
    config = tmp_path / "imc.yaml"
    config.write_text(
        "panel:\n  nuclear: [DNA1, Ir193]\n  membrane: [CD45, E-Cadherin, CD44]\n"
        "backend:\n  name: watershed\n  options:\n    nucleus_diameter_um: 7.0\n"
    )
    return config


# Each case: extra arguments (after `run SLIDE --output OUT`), then what the line must say.
RUN_CASES = {
    "panel, all missing names at once": (
        ["--config", "{imc}"], ["'Ir193', 'E-Cadherin' are not in the slide",
                                "available channels: DNA1", "--nuclear / --membrane"]),
    "misspelled backend option": (
        ["--set", "backend.options.max_expand_um=2"],
        ["unknown key 'backend.options.max_expand_um'", "max_expansion_um"]),
    "backend option of the wrong type": (
        ["--set", "backend.options.nucleus_diameter_um=big"],
        ["backend.options.nucleus_diameter_um", "valid number"]),
    "unknown backend": (["--backend", "nosuch"], ["unknown backend 'nosuch'", "watershed"]),
    "missing onnx model": (
        ["--backend", "onnx", "--model", "{tmp}/no-such-model"],
        ["no-such-model does not exist", "bioimage.io"]),
    "onnx without a model": (["--backend", "onnx"], ["needs a bioimage.io model", "`model`"]),
    "--halo abc": (["--halo", "abc"], ["'--halo'", "positive number of um or 'auto'"]),
    "--halo -5": (["--halo", "-5"], ["'--halo'", "positive number"]),
    "--halo-um 0": (["--halo-um", "0"], ["'--halo-um'", "positive number"]),
    "--tile-px abc": (["--tile-px", "abc"], ["'--tile-px'", "integer"]),
    "--set without =": (["--set", "tiling.tile_px"], ["KEY=VALUE"]),
    "--set of an unknown section": (["--set", "nosuch.key=1"], ["'nosuch' is not a section"]),
    "--set of a wrong type": (["--set", "tiling.min_overlap=2"], ["tiling.min_overlap", "1"]),
    "halo in the YAML": (["--config", "{bad_halo}"], ["tiling.halo_um", "positive number"]),
    "pixel size": (["--pixel-size-um", "-1"], ["'--pixel-size-um'"]),
    "--h5ad of a nuclear-only run": (
        ["--compartment", "nuclear", "--h5ad", "{tmp}/cells.h5ad"],
        ["needs a cell table", "expand_nuclei_um"]),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_mistakes_are_one_line(tmp_path, slide, case):
    extra, expected = RUN_CASES[case]
    bad_halo = tmp_path / "halo.yaml"
    bad_halo.write_text("tiling:\n  halo_um: -5\n")
    values = {"imc": str(_imc_like(tmp_path)), "tmp": str(tmp_path), "bad_halo": str(bad_halo)}
    before = _tree_hash(Path(slide.path))
    output = tmp_path / "out.zarr"
    line = _one_line_error(["run", slide.path, "--output", str(output),
                            *[arg.format(**values) for arg in extra]])
    for fragment in expected:
        assert fragment in line
    assert not output.exists() and not Path(lock_path(str(output))).exists()
    assert _tree_hash(Path(slide.path)) == before


def test_switching_backend_drops_the_other_backends_options(tmp_path, slide):
    """mibi.yaml's watershed options are not handed to cellpose: a note says so."""
    result = CliRunner().invoke(main, [
        "run", str(slide.path), "--config", str(REPO / "configs" / "mibi.yaml"),
        "--backend", "cellpose", "--output", str(tmp_path / "out.zarr"),
    ])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not using the configuration's backend options (nucleus_diameter_um" in result.output
    assert "CellposeOptions" not in result.output and "validation error" not in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_existing_output_names_the_flag_or_the_keyword(tmp_path, slide):
    output = tmp_path / "out.zarr"
    output.mkdir()
    line = _one_line_error(["run", slide.path, "--output", str(output)])
    assert "pass --overwrite" in line
    with pytest.raises(OutputExistsError, match=r"pass overwrite=True\."):
        pipeline.check_run(slide.path, RunConfig(), output=output)


def test_report_pair_with_an_absent_channel_is_an_error(tmp_path, slide):
    store = tmp_path / "measured.ome.zarr"
    make_slide(store, size=(64, 64), seed=1, chunk_px=32)
    measured = CliRunner().invoke(main, ["measure", str(store), "--labels", "gt_cells",
                                         "--nuclei", "gt_nuclei"])
    assert measured.exit_code == 0, measured.output
    page = tmp_path / "page" / "index.html"
    line = _one_line_error(["report", str(store), "--labels", "gt_cells", "--output", str(page),
                            "--pair", "CD3/CD999"])
    assert "CD3/CD999" in line and "'CD999' is not in the cell table" in line
    assert not page.parent.exists()


def test_os_errors_of_every_verb_are_one_line(tmp_path, slide, monkeypatch):
    """A read-only disk (EROFS from the library) is one line naming the path, exit 2."""
    import errno

    import tiled_seg.io.convert
    import tiled_seg.measure
    import tiled_seg.report
    import tiled_seg.segment.expand

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / "x"))

    for module, name in [(tiled_seg.io.convert, "convert"), (tiled_seg.measure, "measure_store"),
                         (tiled_seg.segment.expand, "expand_store"), (tiled_seg.report, "write_report")]:
        monkeypatch.setattr(module, name, read_only)
    for args in (["convert", "in.tif", str(tmp_path / "ro" / "x")], ["measure", slide.path],
                 ["expand", slide.path, "--radius-um", "2"], ["report", slide.path]):
        line = _one_line_error(args)
        assert "Read-only file system" in line and str(tmp_path / "ro" / "x") in line
        assert "writable" in line


def _read_only_mount(tmp_path: Path, content: Path) -> Path:
    mount = tmp_path / "ro"
    mount.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                        capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched test above covers "
                    "the same error path")
    subprocess.run(["cp", "-r", str(content), str(mount)], check=True)
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    return mount


def test_read_only_disk(tmp_path, slide):
    measured = tmp_path / "measured.ome.zarr"
    make_slide(measured, size=(64, 64), seed=1, chunk_px=32)
    done = CliRunner().invoke(main, ["measure", str(measured), "--labels", "gt_cells",
                                     "--nuclei", "gt_nuclei"])
    assert done.exit_code == 0, done.output
    import tifffile

    tiff = tmp_path / "in.tif"
    tifffile.imwrite(tiff, np.zeros((2, 32, 32), np.uint16))
    mount = _read_only_mount(tmp_path, measured)
    store = str(mount / measured.name)
    try:
        for args in (["measure", store, "--labels", "gt_cells", "--nuclei", "gt_nuclei",
                      "--overwrite"],
                     ["expand", store, "--source", "gt_nuclei", "--radius-um", "2"],
                     ["report", store, "--labels", "gt_cells"],
                     ["convert", str(tiff), str(mount / "new.ome.zarr"), "--pixel-size-um", "1"],
                     ["run", store, "--overwrite"]):
            line = _one_line_error(args)
            assert "Read-only file system" in line or "not writable" in line, line
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_run_checks_import_no_cluster(slide):
    """The checks before a run do not load distributed: they answer in about a second."""
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from tiled_seg.config import RunConfig\n"
        "from tiled_seg.pipeline import check_run\n"
        f"check_run({str(slide.path)!r}, RunConfig())\n"
        "assert 'distributed' not in sys.modules and 'anndata' not in sys.modules, 'heavy'\n"
        "print(time.perf_counter() - t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr


def test_help_imports_no_library():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tiled_seg._cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        "heavy = [m for m in ('dask', 'zarr', 'distributed', 'pydantic', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr


def test_choices_match_the_library():
    from tiled_seg._cli.measure import measure_cmd
    from tiled_seg.measure._morphology import MORPHOLOGIES
    from tiled_seg.measure._store import NEIGHBOURS

    choices = {p.name: tuple(p.type.choices) for p in measure_cmd.params
               if isinstance(p.type, click.Choice)}
    assert choices["neighbours"] == NEIGHBOURS and choices["morphology"] == MORPHOLOGIES
    from tiled_seg._cli.export import spatialdata_cmd
    from tiled_seg._cli.report import report_cmd
    from tiled_seg.io.tables import DEFAULT_TABLE

    for command in (measure_cmd, report_cmd, spatialdata_cmd):
        (table,) = [p for p in command.params if p.name in ("table", "table_name") and not p.hidden]
        assert table.default == DEFAULT_TABLE


def test_old_flag_names_still_work(tmp_path, slide):
    """--halo, --tile-size, --table-name, --out and --out-dir stay as hidden aliases."""
    line = _one_line_error(["run", slide.path, "--tile-size", "64", "--halo", "-1"])
    assert "'--halo'" in line
    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--halo-um" in help_text and "--tile-px" in help_text
    assert "--tile-size" not in help_text and "--halo " not in help_text
    assert "--table " in CliRunner().invoke(main, ["measure", "--help"]).output
    assert "--output" in CliRunner().invoke(main, ["report", "--help"]).output
    assert "--output" in CliRunner().invoke(main, ["demo", "--help"]).output


# --- run state and the lock -------------------------------------------------------------


def test_a_live_lock_refuses_a_second_run(tmp_path, slide):
    output = tmp_path / "out.zarr"
    with run_lock(str(output)):
        line = _one_line_error(["run", slide.path, "--output", str(output)])
        assert f"process {os.getpid()} on {socket.gethostname()}" in line
        assert "is writing" in line and lock_path(str(output)) in line
        with pytest.raises(RunLockedError):
            with run_lock(str(output)):
                pass
    assert not Path(lock_path(str(output))).exists() and not output.exists()


def test_a_stale_lock_is_taken_over(tmp_path, slide):
    output = tmp_path / "out.zarr"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    Path(lock_path(str(output))).write_text(
        f'{{"host": "{socket.gethostname()}", "pid": {gone.pid}, "started": "then"}}'
    )
    assert pipeline.check_run(slide.path, RunConfig(), output=output) == str(output)
    with run_lock(str(output)):
        assert f'"pid": {os.getpid()}' in Path(lock_path(str(output))).read_text()
    assert not Path(lock_path(str(output))).exists()


class _Broken:
    max_cell_diameter_um = 25.0

    def segment(self, nuclear, membrane, context):
        raise RuntimeError("the model exploded")


def test_failed_run_is_recorded_and_a_retry_needs_no_overwrite(tmp_path, slide, monkeypatch):
    from distributed import Client

    from tiled_seg.pipeline import _segment

    monkeypatch.setattr(_segment, "get_segmenter", lambda name, options: _Broken())
    output = tmp_path / "out.zarr"
    config = RunConfig(measure=False).with_overrides(**{"tiling.tile_px": 64})
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as local:
        with pytest.raises(RuntimeError, match="the model exploded"):
            pipeline.run(slide.path, config, output=output, client=local)
    state = zarr.open_group(output, mode="r").attrs["tiled_seg"]
    assert state["status"] == "failed" and "the model exploded" in state["error"]
    assert not Path(lock_path(str(output))).exists()
    info = CliRunner().invoke(main, ["info", str(output)])
    assert "FAILED: RuntimeError: the model exploded" in info.output
    assert "no --overwrite needed" in info.output
    # Nothing complete would be lost: a plain retry may start.
    assert pipeline.check_run(slide.path, config, output=output) == str(output)


@pytest.mark.slow
def test_retry_in_place_replaces_only_the_failed_runs_labels(tmp_path, slide, monkeypatch):
    from distributed import Client

    from tiled_seg.pipeline import _segment

    store = tmp_path / "inplace.ome.zarr"
    make_slide(store, size=(SIZE, SIZE), seed=5, chunk_px=CHUNK)
    monkeypatch.setattr(_segment, "get_segmenter", lambda name, options: _Broken())
    config = RunConfig(measure=False).with_overrides(**{"tiling.tile_px": 64})
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as local:
        with pytest.raises(RuntimeError):
            pipeline.run(store, config, client=local)
    # Partial labels where the failed run was writing: replaceable without --overwrite.
    write_labels(store, "cells", np.zeros((SIZE, SIZE), np.uint32), 1.0, overwrite=True)
    assert "cells" in list_labels(store)
    assert pipeline.check_run(store, config) == str(store)
    # Labels of other names (gt_cells: not this run's) still need --overwrite.
    other = config.with_overrides(**{"outputs.cells": "gt_cells"})
    with pytest.raises(OutputExistsError, match="gt_cells"):
        pipeline.check_run(store, other)


# --- processes: Ctrl-C and a backend failing inside a worker -------------------------


def _plugin(tmp_path: Path, body: str) -> dict[str, str]:
    """An environment with backend ``probe`` registered as an entry point (a real plugin)."""
    site = tmp_path / "plugin"
    (site / "probe_backend-1.0.dist-info").mkdir(parents=True)
    (site / "probe_backend-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: probe-backend\nVersion: 1.0\n")
    (site / "probe_backend-1.0.dist-info" / "entry_points.txt").write_text(
        "[tiled_seg.segmenters]\nprobe = probe_backend:Probe\n")
    (site / "probe_backend.py").write_text(
        "import time\n"
        "from tiled_seg.errors import BackendError\n"
        "from tiled_seg.segment.backends.watershed import WatershedSegmenter\n\n"
        "class Probe(WatershedSegmenter):\n"
        "    name = 'probe'\n\n"
        "    def segment(self, nuclear, membrane, context):\n" + body
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}


def _tiled_seg(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from tiled_seg._cli import main; main()", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_during_tiles(tmp_path, slide):
    # Tiles of 3 s each: the run is far from done when Ctrl-C comes, however busy the machine.
    env = _plugin(tmp_path, "        time.sleep(3.0)\n"
                            "        return super().segment(nuclear, membrane, context)\n")
    output = tmp_path / "out.zarr"
    process = _tiled_seg("run", slide.path, "--output", str(output), "--backend", "probe",
                         "--tile-px", "32", "--workers", "2", "--set", "tiling.skip_empty=false", env=env)
    scratch = Path(f"{output}{SCRATCH_SUFFIX}")
    deadline = time.monotonic() + 240
    while not scratch.exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    time.sleep(1.5)  # some of the 16 tiles are running now
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted; rerun with --resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Aborted" not in err
    state = zarr.open_group(output, mode="r").attrs["tiled_seg"]
    assert state["status"] == "running"   # interrupted: --resume continues it
    assert not Path(lock_path(str(output))).exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_backend_failing_in_a_worker_is_one_line(tmp_path, slide):
    env = _plugin(tmp_path, "        raise BackendError('probe failed; fix the probe')\n")
    output = tmp_path / "out.zarr"
    process = _tiled_seg("run", slide.path, "--output", str(output), "--backend", "probe",
                         "--tile-px", "64", "--workers", "1", env=env)
    out, err = process.communicate(timeout=280)
    assert process.returncode == 2, err
    assert "Error: probe failed; fix the probe" in err
    assert "Compute Failed" not in err and "Traceback" not in err
    assert "Worker process still alive" not in err
    state = zarr.open_group(output, mode="r").attrs["tiled_seg"]
    assert state["status"] == "failed" and "probe failed" in state["error"]


# --- flags ----------------------------------------------------------------------------


def test_flags_build_the_config(tmp_path):
    from tiled_seg._cli.run import build_config

    config = build_config(None, backend="onnx", model="m/bioimageio.yaml",
                          settings=("backend.options.threshold=0.3", "tiling.tile_px=256"),
                          **{"compartment": "nuclear", "panel.nuclear": ("DNA1", "DNA2"),
                             "panel.membrane": (), "tiling.tile_px": 128})
    assert config.backend.name == "onnx"
    assert config.backend.options == {"model": "m/bioimageio.yaml", "threshold": 0.3}
    assert config.compartment == "nuclear" and config.panel.nuclear == ("DNA1", "DNA2")
    assert config.panel.membrane == () and config.tiling.tile_px == 256  # --set wins
    cellpose = build_config(None, backend="cellpose", model="w.pt")
    assert cellpose.backend.options == {"pretrained_model": "w.pt"}
    mesmer = build_config(None, settings=("backend.name=mesmer",), model="saved")
    assert mesmer.backend.name == "mesmer" and mesmer.backend.options == {"model_path": "saved"}


def test_info_shows_the_chunk_size(slide):
    result = CliRunner().invoke(main, ["info", str(slide.path)])
    assert result.exit_code == 0 and f"chunk (YX):   {CHUNK} x {CHUNK} px" in result.output


@pytest.mark.slow
def test_run_h5ad_and_the_nuclear_only_note(tmp_path, slide, client):
    address = client.scheduler.address
    h5ad = tmp_path / "cells.h5ad"
    done = CliRunner().invoke(main, [
        "run", str(slide.path), "--output", str(tmp_path / "out.zarr"), "--tile-px", "64",
        "--scheduler", address, "--h5ad", str(h5ad)])
    assert done.exit_code == 0, done.output
    import anndata

    assert anndata.read_h5ad(h5ad).n_obs > 0
    nuclear = CliRunner().invoke(main, [
        "run", str(slide.path), "--output", str(tmp_path / "nuclei.zarr"), "--tile-px", "64",
        "--scheduler", address, "--compartment", "nuclear"])
    assert nuclear.exit_code == 0, nuclear.output
    assert "note: no single-cell table" in nuclear.output and "expand_nuclei_um" in nuclear.output
