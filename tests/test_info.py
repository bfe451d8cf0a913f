"""Tests of tiled_seg.pipeline.info and the ``tiled-seg info`` verb."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.errors import InputNotFoundError, NotNGFFError
from tiled_seg.io.ngff import write_image, write_labels
from tiled_seg.pipeline.info import LabelInfo, describe

NAMES = ["DNA", "CD3"]


def _store(path: Path, version: str = "0.5") -> Path:
    image = np.arange(2 * 600 * 530, dtype=np.uint16).reshape(2, 600, 530)
    write_image(path, image, NAMES, 0.4, chunk_px=128, ngff_version=version)
    return path


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_describe_full_store(tmp_path, version):
    store = _store(tmp_path / "slide.ome.zarr", version)
    labels = np.zeros((600, 530), np.uint32)
    labels[5:50, 5:50] = 4
    write_labels(store, "cells", labels, 0.4, chunk_px=128)
    write_labels(store, "nuclei", labels[:, :].astype(np.uint16), 0.4, chunk_px=128)
    zarr.open_group(str(store / "tables" / "cells"), mode="w", zarr_format=3 if version == "0.5" else 2)
    (store / "tables" / "nuclei.parquet").write_bytes(b"PAR1")
    root = zarr.open_group(str(store), mode="a")
    root.attrs["tiled_seg"] = {"status": "running", "tiles_done": 3, "tiles_total": 8}

    info = describe(store)
    assert info.shape == (2, 600, 530)
    assert info.dtype == "uint16"
    assert info.channel_names == tuple(NAMES)
    assert info.pixel_size_um == pytest.approx(0.4)
    assert info.ngff_version == version
    assert info.levels == ((2, 600, 530), (2, 300, 265))
    assert info.labels == (
        LabelInfo("cells", "uint32", ((600, 530), (300, 265))),
        LabelInfo("nuclei", "uint16", ((600, 530), (300, 265))),
    )
    assert info.tables == ("cells", "nuclei.parquet")
    assert info.run_state is not None and info.run_state.status == "running"

    text = info.format()
    for expected in ["NGFF version: " + version, "2 x 600 x 530  uint16", "0.4 um/px",
                     "DNA, CD3", "2 x 300 x 265", "cells: uint32", "nuclei.parquet",
                     "status: running", "INCOMPLETE"]:
        assert expected in text


def test_describe_bare_store(tmp_path):
    store = tmp_path / "slide.ome.zarr"
    write_image(store, np.zeros((1, 20, 30), np.float32), ["a"], None)
    info = describe(store)
    assert (info.labels, info.tables, info.run_state, info.pixel_size_um) == ((), (), None, None)
    text = info.format()
    assert "labels:       none" in text and "run state:    none" in text
    assert "pixel size:   unknown" in text


def test_describe_does_not_modify_the_store(tmp_path):
    store = _store(tmp_path / "slide.ome.zarr")
    write_labels(store, "cells", np.ones((600, 530), np.uint8), 0.4)
    before = _digest(store)
    describe(store)
    CliRunner().invoke(main, ["info", str(store), "--json"])
    assert _digest(store) == before


def test_describe_errors(tmp_path):
    with pytest.raises(InputNotFoundError):
        describe(tmp_path / "missing.ome.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(NotNGFFError):
        describe(tmp_path / "plain.zarr")


def test_cli_info_text_and_json(tmp_path):
    store = _store(tmp_path / "slide.ome.zarr")
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(store)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == describe(store).format()

    result = runner.invoke(main, ["info", str(store), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["shape"] == [2, 600, 530]
    assert payload["channel_names"] == NAMES
    assert payload["levels"] == [[2, 600, 530], [2, 300, 265]]
    assert payload["run_state"] is None

    result = runner.invoke(main, ["info", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 2
    assert "Error:" in result.output and "does not exist" in result.output
