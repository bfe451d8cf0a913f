"""Tests of the impossible co-expression checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tiled_seg.errors import ChannelError, ConfigError
from tiled_seg.quality.coexpression import (
    binned_rates,
    coexpression,
    marker_thresholds,
    resolve_marker,
)
from tiled_seg.quality.seams import seam_check, seam_distance_px
from tiled_seg.tiling import plan_tiles


def _table() -> pd.DataFrame:
    """Eight cells on a 200 x 200 slide; cells 0 and 5 are CD3+CD20+, cell 6 CD3+PanK+."""
    return pd.DataFrame(
        {
            "cell_id": np.arange(1, 9),
            "centroid_y_px": [10.0, 50, 99, 101, 150, 190, 60, 120],
            "centroid_x_px": [10.0, 50, 60, 60, 150, 98, 140, 30],
            "CD3": [9.0, 8, 0.1, 0.2, 0.1, 7, 9, 0.3],
            "CD20": [8.0, 0.2, 9, 0.1, 0.3, 6, 0.1, 0.2],
            "PanKeratin": [0.1, 0.2, 0.3, 20, 25, 0.1, 15, 0.2],
        }
    )


def test_rates_with_given_thresholds() -> None:
    table = _table()
    r = coexpression(table, pairs=[("CD3", "CD20"), ("CD3", "PanKeratin")],
                     thresholds={"CD3": 1.0, "CD20": 1.0, "PanKeratin": 1.0})
    assert r.pair_counts == {"CD3/CD20": 2, "CD3/PanKeratin": 1}
    assert r.rate == pytest.approx(3 / 8)
    assert r.pair_rates["CD3/CD20"] == pytest.approx(2 / 8)
    assert r.impossible.tolist() == [True, False, False, False, False, True, True, False]
    assert r.to_dict()["n_cells"] == 8


def test_derived_thresholds_separate_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.r_[rng.lognormal(0, 0.3, 900), rng.lognormal(3, 0.3, 100)]
    table = pd.DataFrame({"CD3": values})
    otsu = marker_thresholds(table, ["CD3"])["CD3"]
    assert np.exp(0.9) < otsu < np.exp(2.1)
    assert marker_thresholds(table, ["CD3"], "percentile", 90)["CD3"] == pytest.approx(
        np.percentile(values, 90))
    with pytest.raises(ConfigError):
        marker_thresholds(table, ["CD3"], "mean")  # type: ignore[arg-type]


def test_mibi_names_resolve_and_suffix() -> None:
    table = _table().rename(columns={"CD3": "CD3 (159)", "CD20": "CD20 (164)"})
    assert resolve_marker("CD3", list(table.columns)) == "CD3 (159)"
    with pytest.raises(ChannelError, match="CD68"):
        resolve_marker("CD68", list(table.columns))
    table["CD3 (159)_redsea"] = 0.0
    table["CD20 (164)_redsea"] = table["CD20 (164)"]
    r = coexpression(table, pairs=[("CD3", "CD20")], thresholds={"CD3": 1, "CD20": 1},
                     suffix="_redsea")
    assert r.pairs == (("CD3 (159)_redsea", "CD20 (164)_redsea"),) and r.rate == 0.0


def test_tile_map_and_seam_check() -> None:
    table = _table()
    flags = np.array([True, False, False, False, False, True, True, False])
    rates, counts = binned_rates(table, flags, bin_px=100, shape_yx=(200, 200))
    assert counts.tolist() == [[3, 1], [3, 1]]
    np.testing.assert_allclose(rates, [[1 / 3, 1.0], [1 / 3, 0.0]])
    # Seams at y = 99.5 and x = 99.5; cells 3, 4 (y 99/101) and 6 (x 98) lie within 5 px.
    grid = plan_tiles((200, 200), 100, 5)
    distance = seam_distance_px(table, grid)
    assert np.flatnonzero(distance <= 5).tolist() == [2, 3, 5]
    check = seam_check(table, flags, grid)
    assert (check.n_near, check.n_interior) == (3, 5)
    assert check.near_rate == pytest.approx(1 / 3) and check.interior_rate == pytest.approx(2 / 5)
    no_seams = seam_check(table, flags, plan_tiles((200, 200), 512, 5))
    assert no_seams.n_near == 0 and np.isnan(no_seams.near_rate)
