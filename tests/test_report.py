"""Tests of the QC report (page, figures) and the ``report`` CLI verb."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from matplotlib.image import imread

from tiled_seg._cli import main
from tiled_seg.config import RunConfig
from tiled_seg.errors import InputNotFoundError, OutputExistsError
from tiled_seg.io.tables import read_parquet
from tiled_seg.pipeline.state import RunState
from tiled_seg.quality.seams import seam_check
from tiled_seg.report import write_report
from tiled_seg.tiling import plan_tiles


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A synthetic slide whose ground truth stands in for a run's labels, with a run summary."""
    from tiled_seg.io import read_labels, write_labels
    from tiled_seg.measure import measure_store
    from tiled_seg.measure.redsea import compensate_store
    from tiled_seg.synth import make_slide

    path = tmp_path_factory.mktemp("report") / "slide.ome.zarr"
    make_slide(path, size=(320, 320), n_channels=8, seed=4, spillover=0.2, chunk_px=64)
    write_labels(path, "cells", read_labels(path, "gt_cells"), 1.0, chunk_px=64)
    measure_store(path, nuclei=None, outputs=("parquet",))
    compensate_store(path)
    RunState(
        status="complete",
        config={"panel": {"nuclear": ["DNA1"], "membrane": ["NaKATPase"]},
                "backend": {"name": "watershed"}},
        grid=plan_tiles((320, 320), 128, 20),
        summary={"n_tiles": 9, "tile_px": 128, "halo_px": 20,
                 "timings_s": {"stats": 1.5, "segment": 4.0, "stitch": 0.3, "measure": 2.0}},
    ).write(str(path))
    return path


@pytest.mark.slow
def test_report_page_and_figures(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "qc" / "page.html"
    result = write_report(store, out)
    assert result.html == out and out.is_file()
    expected = {"overview", "seams", "sizes", "intensities", "coexpression", "tiles", "timings"}
    assert set(result.figures) == expected
    page = out.read_text()
    for name, path in result.figures.items():
        assert path.parent == out.parent and f'src="{path.name}"' in page
        assert path.stat().st_size > 8_000, name
        pixels = imread(path)
        assert pixels.ndim == 3 and pixels[..., :3].std() > 0.02, name
    assert result.coexpression is not None and 0 <= result.coexpression.rate < 0.5
    assert result.seams is not None and result.seams.n_near + result.seams.n_interior == result.coexpression.n_cells
    assert "after REDSEA" in page and "near seams" in page
    with pytest.raises(OutputExistsError):
        write_report(store, out)


@pytest.mark.slow
def test_report_cli_default_folder(store: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["report", str(store), "--overwrite"])
    assert done.exit_code == 0, done.output
    page = Path(f"{store}.report") / "index.html"
    assert page.is_file() and "wrote" in done.output
    assert len(list(page.parent.glob("*.png"))) == 7
    pair = runner.invoke(main, ["report", str(store), "--overwrite", "--pair", "CD3/CD20"])
    assert pair.exit_code == 0 and "CD3/CD20" in page.read_text() and "CD45/" not in page.read_text()
    bad = runner.invoke(main, ["report", str(store), "--overwrite", "--pair", "CD3"])
    assert bad.exit_code == 2 and "A/B" in bad.output
    missing = runner.invoke(main, ["report", str(store), "--table", "nope", "--overwrite"])
    assert missing.exit_code == 2 and "tiled-seg measure" in missing.output


@pytest.mark.slow
def test_report_without_run_summary(store: Path, tmp_path: Path) -> None:
    group = zarr.open_group(str(store), mode="a")
    saved = group.attrs["tiled_seg"]
    try:
        group.attrs["tiled_seg"] = {}
        result = write_report(store, tmp_path / "bare.html", overwrite=True)
    finally:
        group.attrs["tiled_seg"] = saved
    assert "seams" not in result.figures and "timings" not in result.figures
    assert result.seams is None and "tiles" in result.figures
    with pytest.raises(InputNotFoundError):
        write_report(store, tmp_path / "x.html", labels="absent")


@pytest.mark.slow
@pytest.mark.cluster
def test_seam_qc_follows_the_run_grid_with_non_square_chunks(tmp_path: Path, client) -> None:
    """Cores aligned to 32 x 48 px chunks are 64 x 48 px: the seams QC and the report use are those."""
    from tiled_seg.pipeline import run
    from tiled_seg.synth import make_slide

    path = tmp_path / "slide.ome.zarr"
    make_slide(path, size=(256, 288), n_channels=8, seed=5, chunk_px=32)
    group = zarr.open_group(str(path), mode="a")
    level = group["0"]
    pixels = level[...]
    rechunked = group.create_array(
        "0", shape=level.shape, chunks=(1, 32, 48), dtype=level.dtype, fill_value=level.fill_value,
        dimension_names=level.metadata.dimension_names, overwrite=True,
    )
    rechunked[...] = pixels
    config = RunConfig().with_overrides(**{"tiling.tile_px": 40, "tiling.halo_um": 20.0})
    with pytest.warns(UserWarning, match="not a multiple"):
        result = run(path, config, output=tmp_path / "out.ome.zarr", client=client)

    state = RunState.read(result.store)
    assert state is not None and state.grid == plan_tiles((256, 288), 40, 20, chunk_yx=(32, 48))
    assert state.grid.tile_px == (64, 48)
    assert state.grid.seam_lines() == ((64, 128, 192), (48, 96, 144, 192, 240))

    cells = read_parquet(result.tables["parquet"])
    report = write_report(result.store, tmp_path / "report" / "index.html")
    assert report.coexpression is not None and report.seams is not None
    expected = seam_check(cells, report.coexpression.impossible, state.grid)
    np.testing.assert_equal(astuple(report.seams), astuple(expected))  # NaN rates compare equal
    recorded = result.qc["seams"]
    assert (recorded["n_near"], recorded["n_interior"]) == (expected.n_near, expected.n_interior)
    # Seams re-derived from the configured size as a square grid would be elsewhere.
    square = seam_check(cells, report.coexpression.impossible, plan_tiles((256, 288), 64, 20))
    assert (square.n_near, square.n_interior) != (expected.n_near, expected.n_interior)
