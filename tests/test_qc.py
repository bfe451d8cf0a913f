"""Tests of the slide QC numbers and of cut-object detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tiled_seg.errors import ConfigError
from tiled_seg.qc import cut_objects, density_per_mm2, slide_qc


def test_cut_objects_finds_seam_cuts() -> None:
    reference = np.zeros((8, 12), np.int32)
    reference[:, :6] = 1
    reference[:, 6:] = 2
    candidate = reference.copy()
    candidate[:, 3:6] = 9  # cell 1 cut in two halves at a "seam"
    candidate[0, 6] = 8  # a 1-px sliver of cell 2: below min_fraction
    assert cut_objects(reference, candidate).tolist() == [1]
    assert cut_objects(reference, reference).tolist() == []


def test_density_and_sizes() -> None:
    # 2 um/px, 100 um bins = 50 px; slide 100 x 75 px: bins 50x50, 50x25 (partial).
    table = pd.DataFrame({
        "centroid_y_px": [10.0, 20, 30, 60, 70],
        "centroid_x_px": [10.0, 20, 60, 10, 70],
        "area_px": [10, 20, 30, 40, 50],
    })
    density = density_per_mm2(table, 2.0, 100.0, shape_yx=(100, 75))
    full, half = (0.1 * 0.1), (0.1 * 0.05)
    np.testing.assert_allclose(density, [2 / full, 1 / half, 1 / full, 1 / half])
    qc = slide_qc(table, 2.0, 100.0, shape_yx=(100, 75))
    assert qc.n_cells == 5 and qc.area_um2_median == pytest.approx(30 * 4)
    assert qc.tissue_area_mm2 == pytest.approx(2 * full + 2 * half)
    assert qc.density_per_mm2_median == pytest.approx(np.median(density))
    with pytest.raises(ConfigError):
        density_per_mm2(table, 0.0)
