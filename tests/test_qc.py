"""Tests of the slide QC numbers and of cut-object detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tiled_seg.errors import ConfigError
from tiled_seg.quality.qc import cut_objects, density_per_mm2, slide_qc


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


def _cells(rng: np.random.Generator, n: int, shape_yx: tuple[int, int]) -> pd.DataFrame:
    """Square 6-px cells at random places, CD3/CD20 exclusive except where flagged."""
    y0 = rng.integers(0, shape_yx[0] - 6, n)
    x0 = rng.integers(0, shape_yx[1] - 6, n)
    cd3 = rng.random(n) < 0.3
    return pd.DataFrame({
        "centroid_y_px": y0 + 2.5, "centroid_x_px": x0 + 2.5,
        "bbox_min_y_px": y0, "bbox_max_y_px": y0 + 6, "bbox_min_x_px": x0, "bbox_max_x_px": x0 + 6,
        "area_px": 36, "area_um2": 36.0,
        "CD3": np.where(cd3, 10.0, 0.1), "CD20": np.where(~cd3, 10.0, 0.1),
    })


def test_run_qc_uses_the_grids_per_axis_seams_and_tiles() -> None:
    from tiled_seg.config import QCConfig
    from tiled_seg.quality.qc import run_qc
    from tiled_seg.tiling import plan_tiles

    shape = (600, 900)
    with pytest.warns(UserWarning, match="next multiple"):
        grid = plan_tiles(shape, 256, 20, chunk_yx=(128, 384))  # cores 256 x 384 px
    assert grid.tile_px == (256, 384)
    table = _cells(np.random.default_rng(0), 2000, shape)
    # Make every cell centred within 12 px of an x seam (384, 768) doubly
    # positive: with seams every 384 px in x they are all near a seam (the
    # interiors stay clean); with a square 256 px rule they would not be.
    near_x = (np.abs(table["centroid_x_px"] - 383.5) < 12) | (np.abs(table["centroid_x_px"] - 767.5) < 12)
    table.loc[near_x, ["CD3", "CD20"]] = 10.0
    qc = run_qc(table, grid, 1.0, QCConfig(exclusive_pairs=(("CD3", "CD20"), ("CD3", "CD68"))))
    assert qc["pairs"] == [["CD3", "CD20"]] and qc["skipped_pairs"] == [["CD3", "CD68"]]
    assert qc["coexpression"]["rate"] == pytest.approx(near_x.mean())
    assert qc["seams"]["interior_rate"] == 0.0 and qc["seams"]["near_rate"] > 0.1
    assert len(qc["per_tile"]) == len(grid.tiles) == 3 * 3
    assert sum(t["n_cells"] for t in qc["per_tile"]) == len(table)
    assert qc["grid"]["tile_px_yx"] == [256, 384]
    # Cells cut along a seam end on it: every cut adds one edge on the seam.
    crossing = (table["bbox_min_x_px"] < 384) & (table["bbox_max_x_px"] > 384)
    cut = table.assign(bbox_max_x_px=np.where(crossing, 384, table["bbox_max_x_px"]))
    edges = run_qc(cut, grid, 1.0, QCConfig(exclusive_pairs=(("CD3", "CD20"),)))["seam_edges"]
    before = qc["seam_edges"]
    assert crossing.sum() > 5 and edges["n_seams"] == 2 + 2
    assert edges["edges_on_seams"] - before["edges_on_seams"] == crossing.sum()
    assert 0.5 < before["ratio"] < 1.5 < edges["ratio"]
    assert qc["slide"]["n_cells"] == 2000 and qc["slide"]["area_um2_median"] == 36.0


@pytest.mark.slow
def test_run_writes_qc_and_redsea_into_the_summary(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from tiled_seg._cli import main
    from tiled_seg.synth import make_slide

    slide = make_slide(tmp_path / "slide.ome.zarr", size=(256, 256), seed=3, chunk_px=128, spillover=0.3)
    config = tmp_path / "run.yaml"
    config.write_text("redsea: true\nredsea_boundary_um: 2.0\ntiling:\n  tile_px: 128\n")
    summary, report = tmp_path / "run.json", tmp_path / "qc.html"
    result = CliRunner().invoke(main, [
        "run", str(slide.path), "--config", str(config), "--output", str(tmp_path / "out.ome.zarr"),
        "--workers", "1", "--summary", str(summary), "--report", str(report),
    ])
    assert result.exit_code == 0, result.output
    qc = json.loads(summary.read_text())["qc"]
    assert len(qc["per_tile"]) == 4 and qc["grid"]["tile_px_yx"] == [128, 128]
    assert 0.0 <= qc["coexpression"]["rate"] <= 1.0
    assert set(qc["redsea"]) >= {"rate_before", "rate_after"}
    assert qc["redsea"]["rate_before"] == qc["coexpression"]["rate"]
    assert report.is_file() and "co-expression" in report.read_text().lower()
    info = CliRunner().invoke(main, ["info", str(tmp_path / "out.ome.zarr")])
    assert "co-expression" in info.output
