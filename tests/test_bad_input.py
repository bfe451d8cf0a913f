"""A catalogue of bad input: each case gives a clear error or a documented, reported handling."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from distributed import Client

from tiled_seg import pipeline
from tiled_seg._cli import main
from tiled_seg.config import RunConfig
from tiled_seg.errors import (
    AxesError,
    CorruptChunkError,
    NotNGFFError,
    OutputNotWritableError,
    TileLayoutError,
)
from tiled_seg.io.ngff import open_slide, read_labels, write_image
from tiled_seg.pipeline import _segment
from tiled_seg.segment.backends import Segmentation
from tiled_seg.synth import make_slide
from tiled_seg.tiling import plan_tiles

SIZE = 128
CHUNK = 32


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("slides") / "slide.ome.zarr",
                      size=(SIZE, SIZE), seed=4, chunk_px=CHUNK)


def _config(tile_px: int = 64) -> RunConfig:
    return RunConfig(measure=False).with_overrides(**{"tiling.tile_px": tile_px})


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _edit_root_attrs(store: Path, edit) -> None:
    group = zarr.open_group(store, mode="r+")
    ome = dict(group.attrs["ome"])
    edit(ome)
    group.attrs["ome"] = ome


def _copy(slide, tmp_path: Path) -> Path:
    target = tmp_path / "copy.ome.zarr"
    shutil.copytree(slide.path, target)
    return target


@pytest.mark.parametrize("verb", [["info"], ["run"], ["measure"], ["expand", "--radius-um", "2"]])
def test_nonexistent_path(tmp_path, verb):
    code, output = _cli(verb[0], str(tmp_path / "absent.ome.zarr"), *verb[1:])
    assert code == 2 and "does not exist" in output and "Traceback" not in output


def test_zarr_without_ngff_metadata(tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(plain, mode="w").create_array("0", shape=(2, 8, 8), dtype="u2")
    code, output = _cli("run", str(plain))
    assert code == 2 and "OME-NGFF" in output and "tiled-seg convert" in output
    with pytest.raises(NotNGFFError, match="bare zarr array"):
        open_slide(plain / "0")


def test_unexpected_axes(tmp_path, slide):
    store = _copy(slide, tmp_path)

    def rename_axis(ome):
        ome["multiscales"][0]["axes"][0]["name"] = "q"

    _edit_root_attrs(store, rename_axis)
    with pytest.raises(AxesError, match="expected a subset of t, c, z, y, x"):
        open_slide(store)

    def drop_axis(ome):
        ome["multiscales"][0]["axes"] = ome["multiscales"][0]["axes"][1:]

    _edit_root_attrs(store, drop_axis)
    code, output = _cli("info", str(store))
    assert code == 2 and "dimensions but the metadata names 2 axes" in output


def test_missing_channel_names_are_generated_and_reported(tmp_path, slide):
    store = _copy(slide, tmp_path)
    _edit_root_attrs(store, lambda ome: ome.pop("omero"))
    with pytest.warns(UserWarning, match="channel_0..channel_11"):
        names = open_slide(store).channel_names
    assert names == tuple(f"channel_{i}" for i in range(12))
    code, output = _cli("info", str(store))
    assert code == 0 and "channel_0, channel_1" in output


def test_duplicated_channel_names_are_refused(tmp_path, slide):
    store = _copy(slide, tmp_path)

    def duplicate(ome):
        ome["omero"]["channels"][1]["label"] = "DNA1"

    _edit_root_attrs(store, duplicate)
    code, output = _cli("info", str(store))
    assert code == 2 and "['DNA1'] more than once" in output


def test_config_with_unknown_keys_or_wrong_types(tmp_path, slide):
    config = tmp_path / "bad.yaml"
    config.write_text("tiling:\n  tile_px: big\n  tile_size: 64\nmeasure: maybe\n")
    code, output = _cli("run", str(slide.path), "--config", str(config))
    assert code == 2
    assert "unknown key 'tiling.tile_size'" in output
    assert "tiling.tile_px" in output and "measure" in output


@pytest.mark.parametrize("args, message", [
    (["--pixel-size-um", "1e6"], "implausible"),
    (["--pixel-size-um", "-1"], "--pixel-size-um"),
])
def test_absurd_pixel_size(tmp_path, slide, args, message):
    code, output = _cli("run", str(slide.path), "--output", str(tmp_path / "o.zarr"), *args)
    assert code == 2 and message in output
    assert not (tmp_path / "o.zarr").exists()


def test_missing_pixel_size_is_asked_for(tmp_path, slide):
    store = _copy(slide, tmp_path)

    def drop_units(ome):
        for axis in ome["multiscales"][0]["axes"]:
            axis.pop("unit", None)

    _edit_root_attrs(store, drop_units)
    code, output = _cli("run", str(store), "--output", str(tmp_path / "o.zarr"))
    assert code == 2 and "does not state its pixel size" in output and "--pixel-size-um" in output


@pytest.mark.slow
def test_nonfinite_blank_and_saturated_regions(tmp_path, slide, client):
    image = np.asarray(open_slide(slide.path).data).astype(np.float32)
    top = float(image.max())
    image[:, :48, :48] = 0.0          # blank corner
    image[:, 96:, 96:] = top          # saturated corner
    dna = 0                           # DNA1
    image[dna, 60:65, 0:10] = np.nan  # 50 NaN
    image[dna, 70, 100:110] = np.inf  # 10 +inf
    image[1, 10:12, 60:62] = -np.inf  # 4 -inf in NaKATPase
    store = tmp_path / "float.ome.zarr"
    write_image(store, image, open_slide(slide.path).channel_names, 1.0, chunk_px=CHUNK)

    result = pipeline.run(store, _config(), output=tmp_path / "out.zarr", client=client)
    assert result.nonfinite_px == 64
    assert sum(result.nonfinite_tiles.values()) == 64
    state = zarr.open_group(tmp_path / "out.zarr", mode="r").attrs["tiled_seg"]
    assert state["summary"]["nonfinite_px"] == 64
    cells = read_labels(tmp_path / "out.zarr", "cells").compute()
    assert cells.max() == result.n_cells
    # No nucleus in a blank region; cells from outside reach in by at most a radius.
    assert not cells[:20, :20].any()
    saturated = np.unique(cells[104:, 104:])
    # A saturated area above (100 - high_percentile)% of the slide sets the top of
    # the slide-wide range; documented in the README.
    print(f"saturated 32x32 px corner: {saturated[saturated > 0].size} cells; slide {result.n_cells}")


def test_corrupted_chunk_is_named(tmp_path, slide, client):
    store = _copy(slide, tmp_path)
    chunk = store / "0" / "c" / "0" / "1" / "2"   # DNA1, y 32-64, x 64-96
    chunk.write_bytes(b"not a zstd frame")
    with pytest.raises(CorruptChunkError) as caught:
        pipeline.run(store, _config(), output=tmp_path / "out.zarr", client=client)
    message = str(caught.value)
    assert str(store) in message and "'DNA1'" in message
    assert "y 32-64, x 64-96" in message and "tiled-seg convert" in message

    # The same damage met by a tile task names the tile as well.
    job = pipeline.TileJob(
        slide_path=str(store), pixel_size_um=1.0, channels=("DNA1", "CD44"), nuclear=("DNA1",),
        membrane=("CD44",), low={}, high={}, backend="watershed", options={},
        context=None, scratch="", primary="cells",  # type: ignore[arg-type]
    )
    tile = plan_tiles((SIZE, SIZE), 64, 16, (CHUNK, CHUNK)).tiles[1]
    with pytest.raises(CorruptChunkError, match=r"tile 1, .*'DNA1' at y 32-64, x 64-96"):
        _segment.read_extended(job, tile)


class _HugeIds:
    max_cell_diameter_um = 25.0

    def segment(self, nuclear, membrane, context):
        cells = np.zeros(nuclear.shape, dtype=np.int64)
        cells[5:9, 5:9] = 2**32 + 7
        return Segmentation(cells=cells)


def test_more_ids_than_uint32_names_the_tile(tmp_path, slide, monkeypatch):
    monkeypatch.setattr(_segment, "get_segmenter", lambda name, options: _HugeIds())
    # Threads in this process, so the patched backend is the one the tiles use.
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as local:
        with pytest.raises(TileLayoutError, match=r"tile \d+ .*uint32.*smaller tile size"):
            pipeline.run(slide.path, _config(), output=tmp_path / "out.zarr", client=local)
    state = zarr.open_group(tmp_path / "out.zarr", mode="r").attrs["tiled_seg"]
    assert state["status"] == "failed" and "uint32" in state["error"]


def test_unwritable_output_leaves_input_untouched(tmp_path, slide, client):
    before = _tree_hash(Path(slide.path))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, output = _cli("run", str(slide.path), "--output", str(blocker / "out.zarr"))
    assert code == 2 and "cannot write the output" in output and "not modified" in output
    with pytest.raises(OutputNotWritableError):
        pipeline.run(slide.path, _config(), output=blocker / "out.zarr", client=client)
    assert _tree_hash(Path(slide.path)) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: a read-only folder does not stop "
                    "root from writing; the not-a-folder case above covers the same error path")
def test_read_only_folder(tmp_path, slide):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, output = _cli("run", str(slide.path), "--output", str(folder / "out.zarr"))
    finally:
        folder.chmod(0o700)
    assert code == 2 and "cannot write the output" in output
