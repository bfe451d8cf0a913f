"""End-to-end runs on small synthetic slides: seams, ids, determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from click.testing import CliRunner
from distributed import Client, LocalCluster

from tiled_seg._cli import main
from tiled_seg.config import RunConfig
from tiled_seg.errors import ChannelError, OutputExistsError, PixelSizeError, TileLayoutError
from tiled_seg.io.ngff import list_labels, open_slide, read_labels, write_image
from tiled_seg.pipeline import run
from tiled_seg.quality.evaluate import match_labels
from tiled_seg.quality.qc import cut_objects
from tiled_seg.synth import make_slide

SIZE = 320
CHUNK = 32


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "slide.ome.zarr"
    return make_slide(path, size=(SIZE, SIZE), seed=7, chunk_px=CHUNK)


def _config(tile_px: int) -> RunConfig:
    return RunConfig(measure=False).with_overrides(**{"tiling.tile_px": tile_px})


def _run_to(tmp_path, slide, client, tile_px: int, name: str) -> np.ndarray:
    output = tmp_path / f"{name}.zarr"
    run(slide.path, _config(tile_px), output=output, client=client)
    return read_labels(output, "cells").compute()


@pytest.fixture(scope="module")
def untiled(tmp_path_factory, slide, client):
    return _run_to(tmp_path_factory.mktemp("untiled"), slide, client, SIZE, "untiled")


@pytest.mark.slow
@pytest.mark.parametrize("tile_px", [64, 96, 160])
def test_tiled_equals_untiled(tmp_path, slide, client, untiled, tile_px):
    tiled = _run_to(tmp_path, slide, client, tile_px, f"tiled{tile_px}")
    score = match_labels(tiled, untiled)
    cut = cut_objects(untiled, tiled, min_fraction=0.2)
    print(f"tile {tile_px}: F1 {score.f1:.4f}, cut cells {cut.size} of {score.n_true}")
    assert score.n_true > 100
    assert score.f1 >= 0.995
    assert cut.size == 0


def test_labels_consecutive_and_connected(untiled):
    ids = np.unique(untiled)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids[-1] + 1))
    for index, piece in enumerate(ndi.find_objects(untiled), start=1):
        components = ndi.label(untiled[piece] == index)[1]
        assert components == 1, f"label {index} has {components} pieces"


@pytest.mark.slow
def test_nuclei_inside_their_cells(tmp_path, slide, client):
    output = tmp_path / "out.zarr"
    result = run(slide.path, _config(96), output=output, client=client)
    cells = read_labels(output, "cells").compute()
    nuclei = read_labels(output, "nuclei").compute()
    inside = nuclei > 0
    assert np.array_equal(cells[inside], nuclei[inside])
    assert result.n_nuclei == np.unique(nuclei[inside]).size
    assert result.n_cells == cells.max()
    # A separate output store is an image store: its levels link to the input's.
    link = zarr.open_group(output / "labels" / "cells").attrs["ome"]["image-label"]["source"]["image"]
    assert link == "../../" and open_slide(output).channel_names == open_slide(slide.path).channel_names
    assert (output / "0").resolve() == (Path(slide.path) / "0").resolve()


@pytest.mark.slow
def test_identical_with_one_and_two_workers(tmp_path, slide, client):
    two = _run_to(tmp_path, slide, client, 64, "two")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as single:
        one = _run_to(tmp_path, slide, single, 64, "one")
    assert one.dtype == np.uint32
    assert one.tobytes() == two.tobytes()


def test_accuracy_against_ground_truth(untiled, slide):
    truth = read_labels(slide.path, "gt_cells").compute()
    score = match_labels(untiled, truth)
    assert score.f1 >= 0.85


def test_halo_larger_than_tile_is_refused(tmp_path, slide, client):
    config = _config(32).with_overrides(**{"tiling.halo_um": 40.0})
    with pytest.raises(TileLayoutError, match="halo"):
        run(slide.path, config, output=tmp_path / "out.zarr", client=client)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_tile_size_is_aligned_to_chunks(tmp_path, slide, client):
    with pytest.warns(UserWarning, match="multiple"):
        result = run(slide.path, _config(100), output=tmp_path / "out.zarr", client=client)
    assert result.tile_px % CHUNK == 0


def test_missing_panel_channel_lists_names(tmp_path, slide, client):
    config = _config(96).with_overrides(**{"panel.nuclear": ["DAPI"]})
    with pytest.raises(ChannelError, match="DNA1"):
        run(slide.path, config, output=tmp_path / "out.zarr", client=client)
    assert not (tmp_path / "out.zarr").exists()


def test_unknown_pixel_size_is_asked_for(tmp_path, client):
    path = tmp_path / "nopx.ome.zarr"
    image = np.zeros((4, 64, 64), dtype=np.uint16)
    write_image(path, image, ["DNA1", "NaKATPase", "CD44", "CD45"], None, chunk_px=32)
    with pytest.raises(PixelSizeError, match="--pixel-size-um"):
        run(path, _config(64), client=client)
    assert list_labels(path) == []


def test_existing_output_needs_overwrite(tmp_path, slide, client):
    output = tmp_path / "out.zarr"
    output.mkdir()
    marker = output / "keep.txt"
    marker.write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        run(slide.path, _config(160), output=output, client=client)
    assert marker.read_text() == "mine"


@pytest.mark.slow
def test_cli_run_writes_summary(tmp_path, slide, client):
    summary = tmp_path / "run.json"
    output = tmp_path / "cli.zarr"
    address = client.scheduler.address
    result = CliRunner().invoke(main, [
        "run", str(slide.path), "--output", str(output), "--tile-size", "96",
        "--scheduler", address, "--summary", str(summary),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["n_cells"] > 100
    assert data["n_tiles"] == 16
    assert set(data["labels"]) == {"cells", "nuclei"}
    assert {"stats", "segment", "stitch", "write"} <= set(data["timings_s"])


def test_cli_reports_errors_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path / "absent.ome.zarr")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


@pytest.mark.slow
def test_run_measures_border_neighbours(tmp_path, slide, client):
    import pandas as pd

    config = RunConfig(neighbours="borders", neighbour_distance_um=2.0).with_overrides(
        **{"tiling.tile_px": 160}
    )
    result = run(slide.path, config, output=tmp_path / "out.zarr", client=client)
    cells = pd.read_parquet(result.tables["parquet"])
    edges = pd.read_parquet(result.tables["neighbours"])
    assert len(cells) == result.n_cells
    border = edges[edges["kind"] == "border"]
    assert len(border) > 0
    assert border["distance_um"].max() <= 2.0


def test_run_writes_every_pyramid_level_of_its_labels(tmp_path, slide, client):
    # Four copies of the small slide: large enough for a second level (>= 2 x 256 px).
    small = open_slide(slide.path)
    wide = tmp_path / "wide.ome.zarr"
    write_image(wide, np.tile(np.asarray(small.data), (1, 2, 2)), small.channel_names, small.pixel_size_um,
                chunk_px=128)
    output = tmp_path / "out.zarr"
    result = run(wide, RunConfig().with_overrides(**{"tiling.tile_px": 320}), output=output, client=client)
    assert {"write", "measure", "pyramid"} <= set(result.timings)
    for name in ("cells", "nuclei"):
        group = zarr.open_group(str(output / "labels" / name), mode="r")
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        assert len(datasets) == 2
        full = read_labels(output, name).compute()
        for level, dataset in enumerate(datasets):
            np.testing.assert_array_equal(group[dataset["path"]][...], full[:: 2**level, :: 2**level])
