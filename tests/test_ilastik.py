"""``tiled-seg convert`` of ilastik probability exports (HDF5 and steinbock TIFF)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.errors import AxesError, InputFormatError
from tiled_seg.io.convert import convert
from tiled_seg.io.ngff import open_slide

h5py = pytest.importorskip("h5py")

NAMES = ("nucleus", "cytoplasm", "background")


def _probabilities(dtype, shape=(40, 56)):
    rng = np.random.default_rng(0)
    values = rng.dirichlet(np.ones(3), size=shape).astype(np.float32)  # (Y, X, 3), sums to 1
    if np.issubdtype(dtype, np.integer):
        return np.round(values * np.iinfo(dtype).max).astype(dtype)
    return values.astype(dtype)


def _axistags(keys: str) -> str:
    return json.dumps({"axes": [{"key": k, "typeFlags": 2, "resolution": 0, "description": ""} for k in keys]})


def _read(store: str) -> np.ndarray:
    slide = open_slide(store)
    assert slide.channel_names == NAMES
    assert slide.data.dtype == np.float32
    return slide.data.compute()


@pytest.mark.parametrize("dtype, axes", [(np.uint8, "yxc"), (np.float32, "cyx"), (np.float32, None)])
def test_hdf5_export_becomes_probabilities(tmp_path, dtype, axes):
    yxc = _probabilities(dtype)
    data = np.moveaxis(yxc, -1, 0) if axes == "cyx" else yxc
    with h5py.File(tmp_path / "probs.h5", "w") as handle:
        dataset = handle.create_dataset("exported_data", data=data, chunks=True)
        if axes is not None:
            dataset.attrs["axistags"] = _axistags(axes)
    store = convert(tmp_path / "probs.h5", tmp_path / "probs.ome.zarr", pixel_size_um=1.0)[0]
    scale = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1
    np.testing.assert_allclose(_read(store), np.moveaxis(yxc, -1, 0) / scale, atol=1e-6)


@pytest.mark.parametrize("layout", ["cyx", "yxc"])
def test_steinbock_tiff_export_through_the_command(tmp_path, layout):
    yxc = _probabilities(np.uint16)
    tifffile.imwrite(tmp_path / "probs.tiff", np.moveaxis(yxc, -1, 0) if layout == "cyx" else yxc)
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "probs.tiff"),
                                       str(tmp_path / "probs.ome.zarr"), "--probabilities",
                                       "--pixel-size-um", "1"])
    assert result.exit_code == 0, result.output
    values = _read(str(tmp_path / "probs.ome.zarr"))
    np.testing.assert_allclose(values, np.moveaxis(yxc, -1, 0) / 65535, atol=1e-6)
    np.testing.assert_allclose(values.sum(axis=0), 1.0, atol=1e-4)


def test_bad_exports_are_named(tmp_path):
    with h5py.File(tmp_path / "two.h5", "w") as handle:
        handle["a"], handle["b"] = np.zeros((4, 4, 3)), np.zeros((4, 4, 3))
    with pytest.raises(InputFormatError, match="no dataset 'exported_data'.*a, b"):
        convert(tmp_path / "two.h5", tmp_path / "out.ome.zarr", pixel_size_um=1.0)
    with h5py.File(tmp_path / "stack.h5", "w") as handle:
        handle["exported_data"] = np.zeros((2, 4, 4, 3), np.float32)
        handle["exported_data"].attrs["axistags"] = _axistags("zyxc")
    with pytest.raises(AxesError, match="several z planes"):
        convert(tmp_path / "stack.h5", tmp_path / "out.ome.zarr", pixel_size_um=1.0)
    (tmp_path / "plain.txt").write_text("X\tY\n")
    with pytest.raises(InputFormatError, match="leave out --probabilities"):
        convert(tmp_path / "plain.txt", tmp_path / "out.ome.zarr", probabilities=True)
    assert not (tmp_path / "out.ome.zarr").exists()
