"""The pipeline on real tissue: the converted MIBI fov8 field against Mesmer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import DATA, requires_data

from tiled_seg.config import load_config
from tiled_seg.io.convert import convert
from tiled_seg.io.ngff import read_labels
from tiled_seg.pipeline import run
from tiled_seg.quality.evaluate import match_labels

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FOV8 = "mibi_tnbc_fov8"


@pytest.mark.slow
@requires_data(f"{FOV8}/fov8_mibitiff_22ch.tiff")
def test_mibi_config_on_fov8_reaches_target(tmp_path, client):
    store = convert(DATA / FOV8 / "fov8_mibitiff_22ch.tiff", tmp_path / "fov8.ome.zarr")[0]
    config = load_config(CONFIGS / "mibi.yaml").with_overrides(
        **{"measure": False, "tiling.tile_px": 512}
    )
    result = run(store, config, client=client)
    cells = read_labels(store, "cells").compute()
    reference = tifffile.imread(DATA / FOV8 / "fov8_mesmer_labels.tif")
    score = match_labels(cells, reference)
    print(f"fov8 whole-cell F1 vs Mesmer: {score.f1:.3f} ({result.n_cells} cells, "
          f"{result.n_tiles} tiles)")
    assert result.n_tiles == 4
    assert np.unique(cells).size - 1 == result.n_cells
    assert score.f1 >= 0.72
