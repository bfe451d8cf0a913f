"""Several slides in one cluster session; a broken slide is reported, the others finish."""

from __future__ import annotations

import json

import pytest
import zarr
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.config import RunConfig
from tiled_seg.errors import ConfigError, InputNotFoundError
from tiled_seg.io import list_labels, read_labels
from tiled_seg.pipeline.batch import expand_slides, output_for, run_batch
from tiled_seg.synth import make_slide

CONFIG = RunConfig(measure=False).with_overrides(**{"tiling.tile_px": 64})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fovs")
    make_slide(root / "a.ome.zarr", size=(96, 96), seed=1, chunk_px=32)
    make_slide(root / "b.ome.zarr", size=(96, 96), seed=2, chunk_px=32)
    zarr.open_group(root / "broken.ome.zarr", mode="w")  # a zarr group without NGFF metadata
    return root


@pytest.mark.slow
def test_one_broken_slide_does_not_stop_the_others(tmp_path, folder, client):
    slides = expand_slides([str(folder / "*.ome.zarr")])
    assert [s.rsplit("/", 1)[-1] for s in slides] == ["a.ome.zarr", "b.ome.zarr", "broken.ome.zarr"]
    stages = set()
    result = run_batch(slides, CONFIG, output_dir=str(tmp_path / "out"), client=client,
                       progress=lambda stage, done, total: stages.add(stage))
    status = {o.slide.rsplit("/", 1)[-1]: o for o in result.outcomes}
    assert status["a.ome.zarr"].status == status["b.ome.zarr"].status == "ok"
    assert status["broken.ome.zarr"].status == "failed"
    assert "NotNGFFError" in status["broken.ome.zarr"].error
    assert "multiscales" in status["broken.ome.zarr"].error
    for name in ("a.ome.zarr", "b.ome.zarr"):
        labels = read_labels(tmp_path / "out" / name, "cells").compute()
        assert labels.max() == status[name].result.n_cells > 5
    assert list_labels(folder / "a.ome.zarr") == ["gt_cells", "gt_nuclei"]  # input untouched
    assert {"a.ome.zarr segment", "b.ome.zarr segment"} <= stages
    summary = result.to_summary()
    assert (summary["n_ok"], summary["n_failed"]) == (2, 1)
    assert summary["slides"][0]["n_tiles"] == 4


@pytest.mark.slow
def test_cli_batch_writes_per_slide_summary(tmp_path, folder, client):
    summary = tmp_path / "run.json"
    result = CliRunner().invoke(main, [
        "run", str(folder / "*.ome.zarr"), "--output", str(tmp_path / "out"),
        "--tile-size", "64", "--cluster", client.scheduler.address, "--summary", str(summary),
    ])
    assert result.exit_code == 1, result.output
    assert "failed broken.ome.zarr" in result.output.replace(str(folder) + "/", "")
    data = json.loads(summary.read_text())
    assert [s["status"] for s in data["slides"]] == ["ok", "ok", "failed"]
    assert data["slides"][2]["error"] and data["slides"][0]["n_cells"] > 5


def test_pattern_without_match_and_clashing_outputs(tmp_path):
    with pytest.raises(InputNotFoundError, match="matches no slide"):
        expand_slides([str(tmp_path / "*.ome.zarr")])
    with pytest.raises(ConfigError, match="distinct names"):
        output_for(["/x/s.ome.zarr", "/y/s.ome.zarr"], str(tmp_path))
    assert output_for(["/x/s.ome.zarr"], None) == {"/x/s.ome.zarr": None}
    assert output_for(["/x/s.ome.zarr"], "s3://b/out") == {"/x/s.ome.zarr": "s3://b/out/s.ome.zarr"}
