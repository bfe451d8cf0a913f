"""Tests of the QC report (page, figures) and the ``report`` CLI verb."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner
from matplotlib.image import imread

from tiled_seg._cli import main
from tiled_seg.errors import InputNotFoundError, OutputExistsError
from tiled_seg.report import write_report


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A synthetic slide whose ground truth stands in for a run's labels, with a run summary."""
    from tiled_seg.io import read_labels, write_labels
    from tiled_seg.measure import measure_store
    from tiled_seg.redsea import compensate_store
    from tiled_seg.synth import make_slide

    path = tmp_path_factory.mktemp("report") / "slide.ome.zarr"
    make_slide(path, size=(320, 320), n_channels=8, seed=4, spillover=0.2, chunk_px=64)
    write_labels(path, "cells", read_labels(path, "gt_cells"), 1.0, chunk_px=64)
    measure_store(path, nuclei=None, outputs=("parquet",))
    compensate_store(path)
    group = zarr.open_group(str(path), mode="a")
    group.attrs["tiled_seg"] = {
        "status": "complete",
        "config": {"panel": {"nuclear": ["DNA1"], "membrane": ["NaKATPase"]},
                   "backend": {"name": "watershed"}},
        "summary": {"n_tiles": 9, "tile_px": 128, "halo_px": 20,
                    "timings_s": {"stats": 1.5, "segment": 4.0, "stitch": 0.3, "measure": 2.0}},
    }
    return path


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
