"""Inputs are never modified: hashes of input files before and after every CLI verb."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.synth import make_slide

#: What a run, measure or expand may write into an image store in place.
OURS = ("labels", "tables")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("slides") / "slide.ome.zarr",
                      size=(128, 128), seed=2, chunk_px=32)


def _hash(path: Path, *, in_place: bool = False) -> dict[str, str]:
    """SHA-256 of every file under ``path``; in place, our outputs are left out."""
    hashes = {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        name = file.relative_to(path).as_posix() if file != path else file.name
        if in_place and name.split("/")[0] in OURS:
            continue
        data = file.read_bytes()
        if in_place and name in ("zarr.json", ".zattrs"):
            meta = json.loads(data)
            meta.get("attributes", meta).pop("tiled_seg", None)
            data = json.dumps(meta, sort_keys=True).encode()
        hashes[name] = hashlib.sha256(data).hexdigest()
    return hashes


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_convert_leaves_its_source_untouched(tmp_path):
    source = tmp_path / "image.tif"
    tifffile.imwrite(source, np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64))
    before = _hash(source)
    _cli("convert", str(source), str(tmp_path / "out.ome.zarr"), "--pixel-size-um", "1",
         "--chunk-px", "32")
    assert _hash(source) == before


@pytest.mark.slow
def test_run_to_another_store_leaves_the_whole_input_untouched(tmp_path, slide, client):
    before = _hash(Path(slide.path))
    _cli("info", str(slide.path))
    _cli("run", str(slide.path), "--output", str(tmp_path / "out.zarr"), "--tile-size", "64",
         "--scheduler", client.scheduler.address)
    _cli("evaluate", f"{tmp_path / 'out.zarr'}/labels/cells", f"{slide.path}/labels/gt_cells")
    assert _hash(Path(slide.path)) == before


@pytest.mark.slow
def test_in_place_verbs_touch_only_labels_tables_and_run_record(tmp_path, slide, client):
    store = tmp_path / "slide.ome.zarr"
    shutil.copytree(slide.path, store)
    before = _hash(store, in_place=True)
    gt_before = _hash(store / "labels" / "gt_cells")
    steps = [
        ("run", str(store), "--tile-size", "64", "--scheduler", client.scheduler.address),
        ("info", str(store)),
        ("measure", str(store), "--overwrite"),
        ("expand", str(store), "--radius-um", "2"),
        ("evaluate", f"{store}/labels/cells", f"{store}/labels/gt_cells"),
    ]
    for step in steps:
        _cli(*step)
        assert _hash(store, in_place=True) == before, f"{step[0]} modified the input"
    # Existing labels that a run does not own are left as they were.
    assert _hash(store / "labels" / "gt_cells") == gt_before
