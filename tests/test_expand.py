"""Distributed nuclear expansion equals skimage's expand_labels on the whole image."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from click.testing import CliRunner
from skimage.segmentation import expand_labels

from tiled_seg._cli import main
from tiled_seg.errors import ConfigError, OutputExistsError
from tiled_seg.io.ngff import read_labels, write_image, write_labels
from tiled_seg.segment.expand import expand_labels_dask, expand_store


def _nuclei(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """Small discs (radius 3 px) at random places, ids 1..n; later ids overwrite."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint32)
    for index, (y, x) in enumerate(rng.integers(0, shape, size=(n, 2)), start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = index
    return labels


@pytest.mark.parametrize("distance_px", [1, 2.5, 4, 7.3, 12])
@pytest.mark.parametrize("chunks", [(8, 8), (10, 13)])
def test_equals_whole_image(distance_px: float, chunks: tuple[int, int]) -> None:
    # Chunks (8-13 px) are smaller than the expanded cells (up to 30 px), and
    # single pixels as seeds produce many exact distance ties.
    labels = _nuclei((67, 83), 25, seed=3)
    rng = np.random.default_rng(4)
    points = rng.integers(0, labels.shape, size=(15, 2))
    labels[points[:, 0], points[:, 1]] = np.arange(26, 41, dtype=np.uint32)
    expected = expand_labels(labels, distance_px)
    result = expand_labels_dask(da.from_array(labels, chunks=chunks), distance_px, block_px=chunks[0])
    assert result.shape == labels.shape
    got = result.compute()
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)


def test_cell_count_unchanged_and_nuclei_kept() -> None:
    labels = _nuclei((50, 50), 12, seed=5)
    got = expand_labels_dask(da.from_array(labels, chunks=9), 5, block_px=9).compute()
    assert set(np.unique(got)) == set(np.unique(labels))
    inside = labels > 0
    assert np.array_equal(got[inside], labels[inside])


def test_zero_distance_is_identity_and_bad_distance_raises() -> None:
    labels = da.from_array(_nuclei((20, 20), 3, seed=1), chunks=7)
    assert np.array_equal(expand_labels_dask(labels, 0).compute(), labels.compute())
    with pytest.raises(ConfigError, match="distance"):
        expand_labels_dask(labels, -1)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "slide.ome.zarr"
    labels = _nuclei((70, 60), 10, seed=7)
    write_image(path, np.ones((1, 70, 60), np.uint16), ["dna"], 0.5, chunk_px=16)
    write_labels(path, "nuclei", labels, 0.5, chunk_px=16)
    return path, labels


def test_expand_store_converts_um_to_px(store) -> None:
    path, labels = store
    result = expand_store(path, radius_um=2.0)
    assert result.distance_px == pytest.approx(4.0)
    written = read_labels(path, "cells_expanded").compute()
    assert np.array_equal(written, expand_labels(labels, 4.0))
    with pytest.raises(OutputExistsError):
        expand_store(path, radius_um=2.0)
    with pytest.raises(ConfigError, match="target"):
        expand_store(path, target="nuclei", radius_um=1.0)


def test_cli_expand(store) -> None:
    path, labels = store
    run = CliRunner().invoke(main, ["expand", str(path), "--radius-um", "1.5", "--target", "cells"])
    assert run.exit_code == 0, run.output
    assert np.array_equal(read_labels(path, "cells").compute(), expand_labels(labels, 3.0))
    again = CliRunner().invoke(main, ["expand", str(path), "--radius-um", "1.5", "--target", "cells"])
    assert again.exit_code == 2 and "--overwrite" in again.output
