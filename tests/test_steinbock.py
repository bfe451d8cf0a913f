"""The steinbock export has steinbock's layout and names, and steinbock's readers open it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tiled_seg.errors import OutputExistsError
from tiled_seg.io.steinbock import STEINBOCK_MAX_ID, steinbock_tables, write_steinbock

NAMES = ["HH3 (89)", "CD3"]


def _table(ids: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = len(ids)
    table = pd.DataFrame({
        "cell_id": ids,
        "area_px": rng.integers(10, 50, n),
        "area_um2": rng.random(n),
        "centroid_y_px": rng.random(n) * 10,
        "centroid_x_px": rng.random(n) * 10,
        "centroid_y_um": rng.random(n),
        "major_axis_length_px": rng.random(n) * 5 + 2,
        "minor_axis_length": rng.random(n) + 1,
        "eccentricity": rng.random(n),
        "nucleus_id": ids,
    })
    for name in NAMES:
        table[name] = rng.random(n)
    return table


def _edges() -> pd.DataFrame:
    return pd.DataFrame({
        "cell_a": [1, 2, 1],
        "cell_b": [2, 3, 4],
        "kind": pd.Categorical(["touching", "centroid", "centroid"]),
        "distance_um": [1.0, 2.0, 3.0],
    })


def test_layout_and_names(tmp_path) -> None:
    table = _table(np.arange(1, 6))
    paths = write_steinbock(tmp_path, "fov1", steinbock_tables(table, NAMES, _edges(), 0.5))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv")) == [
        "intensities/fov1.csv", "neighbors/fov1.csv", "panel.csv", "regionprops/fov1.csv"]
    assert list(pd.read_csv(paths["steinbock_intensities"]).columns) == ["Object", *NAMES]
    # skimage's names, px units only; columns steinbock has no name for are left out.
    assert list(pd.read_csv(paths["steinbock_regionprops"]).columns) == [
        "Object", "area", "centroid-0", "centroid-1", "axis_major_length", "axis_minor_length",
        "eccentricity"]
    neighbors = pd.read_csv(paths["steinbock_neighbors"])
    # Two centroid edges, listed in both directions, distances in px.
    assert neighbors.values.tolist() == [[1, 4, 6.0], [2, 3, 4.0], [3, 2, 4.0], [4, 1, 6.0]]
    with pytest.raises(OutputExistsError):
        write_steinbock(tmp_path, "fov1", steinbock_tables(table, NAMES, _edges(), 0.5))
    # A second image shares the folder and its panel.
    write_steinbock(tmp_path, "fov2", steinbock_tables(table, NAMES, _edges(), 0.5))
    with pytest.raises(OutputExistsError, match="lists channels"):
        write_steinbock(tmp_path, "fov3", steinbock_tables(table, ["CD3"], _edges(), 0.5))


def test_read_by_steinbock(tmp_path) -> None:
    io = pytest.importorskip("steinbock.io", reason="steinbock is not installed (it is in [dev])")
    table = _table(np.arange(1, 6))
    write_steinbock(tmp_path, "fov1", steinbock_tables(table, NAMES, _edges(), 0.5))
    files = io.list_data_files(tmp_path / "intensities")
    assert [f.name for f in files] == ["fov1.csv"]
    intensities = io.read_data(files[0])
    np.testing.assert_allclose(intensities[NAMES].to_numpy(), table[NAMES].to_numpy())
    assert list(intensities.index) == [1, 2, 3, 4, 5]
    regionprops = io.read_data(io.list_data_files(tmp_path / "regionprops", files)[0])
    np.testing.assert_allclose(regionprops["centroid-0"], table["centroid_y_px"])
    neighbors = io.read_neighbors(io.list_neighbors_files(tmp_path / "neighbors", files)[0])
    assert neighbors["Distance"].tolist() == [6.0, 4.0, 4.0, 6.0]
    assert io.read_panel(tmp_path / "panel.csv")["name"].tolist() == NAMES


def test_warns_when_ids_exceed_uint16(tmp_path) -> None:
    table = _table(np.array([1, 2, 3, 4, STEINBOCK_MAX_ID + 1]))
    with pytest.warns(UserWarning, match="uint16"):
        write_steinbock(tmp_path, "big", steinbock_tables(table, NAMES, _edges(), 0.5))
