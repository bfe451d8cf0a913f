"""Tests of REDSEA lateral spillover compensation."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from tiled_seg.errors import AxesError, ConfigError
from tiled_seg.measure.redsea import REDSEA_SUFFIX, boundary_tables, compensate_store, redsea_arrays
from tiled_seg.quality.coexpression import coexpression, marker_thresholds


def _two_cells() -> tuple[np.ndarray, np.ndarray]:
    """Cell 1 (cols 0-3) expresses 1 count/px; half of it spilled into cell 2's first column."""
    labels = np.zeros((6, 8), np.int32)
    labels[:, :4] = 1
    labels[:, 4:] = 2
    image = np.zeros((1, 6, 8))
    image[0, :, :4] = 1.0
    image[0, :, 4] = 0.5
    return labels, image


@pytest.mark.parametrize("reinforce, expected", [(True, [27.0, 0.0]), (False, [21.0, 0.0])])
def test_formula_by_hand(reinforce: bool, expected: list[float]) -> None:
    labels, image = _two_cells()
    tables = boundary_tables(labels, image, element_size=1)
    # Boundary band: column 3 of cell 1 (E=6) and column 4 of cell 2 (E=3);
    # contact: the 12 px of columns 3 and 4 see both labels.
    np.testing.assert_allclose(tables["boundary"][:, 0], [6.0, 3.0])
    np.testing.assert_array_equal(tables["pairs"], [[1, 2, 12]])
    out = redsea_arrays(labels, image, ["CD3"], element_size=1, reinforce=reinforce)
    # S1 = 24, S2 = 3: S' = S + c E_own - E_neighbour, clipped at 0; means over 24 px.
    np.testing.assert_allclose(out[f"CD3{REDSEA_SUFFIX}"] * out["area_px"], expected)
    np.testing.assert_allclose(out["CD3"], [1.0, 0.125])


def test_isolated_cell_is_unchanged() -> None:
    labels = np.zeros((10, 10), np.int32)
    labels[2:6, 2:6] = 1
    image = np.random.default_rng(0).random((2, 10, 10))
    out = redsea_arrays(labels, image, ["a", "b"])
    np.testing.assert_allclose(out[["a_redsea", "b_redsea"]].to_numpy(), out[["a", "b"]].to_numpy())


def test_dask_blocks_equal_whole_image() -> None:
    rng = np.random.default_rng(2)
    labels = np.kron(rng.integers(0, 30, (9, 11)), np.ones((7, 6), np.int64)).astype(np.uint32)
    image = rng.random((3, *labels.shape))
    whole = boundary_tables(labels, image)
    # Chunks smaller than the cells, uneven at the edges.
    chunked = boundary_tables(da.from_array(labels, chunks=(10, 13)), da.from_array(image, chunks=(1, 17, 9)))
    np.testing.assert_array_equal(chunked["label"], whole["label"])
    np.testing.assert_array_equal(chunked["pairs"], whole["pairs"])
    np.testing.assert_allclose(chunked["boundary"], whole["boundary"])


def test_validation() -> None:
    labels, image = _two_cells()
    with pytest.raises(AxesError):
        boundary_tables(labels, image[:, :3])
    with pytest.raises(ConfigError):
        boundary_tables(labels, image, element_size=0)


@pytest.fixture(scope="module")
def spill_tables():
    from tiled_seg.synth import synth_arrays

    size = (384, 384)
    clean, cells, _, names = synth_arrays(size, n_channels=8, seed=3)
    spilled, _, _, _ = synth_arrays(size, n_channels=8, seed=3, spillover=0.3)
    labels = cells.compute()
    return redsea_arrays(labels, clean.compute(), names), redsea_arrays(labels, spilled.compute(), names)


def test_spillover_rate_falls_and_own_signal_is_kept(spill_tables) -> None:
    clean, spilled = spill_tables
    markers = ["CD3", "CD20", "CD68", "PanKeratin", "CD45"]
    # Thresholds from the spillover-free slide, the same before and after.
    thresholds = marker_thresholds(clean, markers)
    before = coexpression(spilled, thresholds=thresholds)
    after = coexpression(spilled, thresholds=thresholds, suffix=REDSEA_SUFFIX)
    assert coexpression(clean, thresholds=thresholds).rate < before.rate
    assert after.rate < 0.7 * before.rate
    for marker in ("CD3", "CD20", "PanKeratin"):
        own = (clean[marker] > thresholds[marker]).to_numpy()
        raw, fixed = spilled[marker].to_numpy(), spilled[f"{marker}{REDSEA_SUFFIX}"].to_numpy()
        # Signal spilled into cells of exclusive types drops ...
        assert fixed[~own].mean() < 0.8 * raw[~own].mean()
        # ... while the marker's own cells keep (REDSEA reinforcement: gain) theirs.
        assert fixed[own].mean() >= 0.95 * raw[own].mean()


@pytest.mark.slow
def test_compensate_store_writes_columns_and_layer(tmp_path) -> None:
    from tiled_seg.io.tables import read_anndata_zarr, read_parquet
    from tiled_seg.measure import measure_store
    from tiled_seg.synth import make_slide

    info = make_slide(tmp_path / "s.ome.zarr", size=(160, 160), n_channels=5, seed=1,
                      spillover=0.2, chunk_px=64)
    measure_store(info.path, labels="gt_cells", nuclei=None)
    table = compensate_store(info.path, labels="gt_cells", channels=["CD3", "CD20"])
    stored = read_parquet(info.path / "tables" / "cell_table.parquet")
    assert {"CD3_redsea", "CD20_redsea"} <= set(stored.columns)
    assert "DNA1_redsea" not in stored.columns
    from tiled_seg.io import read_labels
    from tiled_seg.io.ngff import open_slide

    slide = open_slide(info.path)
    direct = redsea_arrays(read_labels(info.path, "gt_cells").compute(),
                           slide.data[[2, 3]].compute(), ["CD3", "CD20"])
    np.testing.assert_allclose(stored["CD3_redsea"], direct["CD3_redsea"])
    np.testing.assert_allclose(table["CD20_redsea"], direct["CD20_redsea"])
    adata = read_anndata_zarr(info.path, "cell_table")
    layer = adata.layers["redsea"]
    names = list(adata.var_names)
    np.testing.assert_allclose(layer[:, names.index("CD3")], direct["CD3_redsea"])
    np.testing.assert_allclose(layer[:, names.index("DNA1")], adata.X[:, names.index("DNA1")])
