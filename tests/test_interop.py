"""Every kind of store tiled_seg writes opens in the OME-Zarr and scverse tools.

Each store (``synth``, ``convert``, a run in place, a run with ``--output``,
NGFF 0.4 and 0.5, after ``expand`` and ``measure``) is validated with
ome-zarr-models and yaozarrs, read with ome-zarr-py's ``Reader`` and with
napari-ome-zarr's reader function (no Qt needed), and exported to SpatialData
and read back. ome-zarr-models, yaozarrs and steinbock are in ``[dev]``;
spatialdata and napari-ome-zarr pin an older dask and need napari, so they
live in ``[interop]`` and run with ``make test-interop`` (skipped elsewhere,
with the reason).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from tiled_seg._cli import main
from tiled_seg.config import RunConfig
from tiled_seg.io import list_labels, read_labels
from tiled_seg.io.convert import convert
from tiled_seg.io.tables import DEFAULT_TABLE, read_anndata_zarr
from tiled_seg.measure import measure_store
from tiled_seg.pipeline import run
from tiled_seg.segment.expand import expand_store
from tiled_seg.synth import make_slide

VERSIONS = ["0.4", "0.5"]


def _needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} is not installed here; it runs in `make test-interop`",
    )


def validate_store(path: Path, labels: list[str]) -> list[str]:
    """Check ``path`` with every validator and reader installed; return those that ran."""
    import ome_zarr_models
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path_text = str(path)
    ran = []
    model = ome_zarr_models.open_ome_zarr(path_text)
    assert type(model).__name__ == "Image"
    for name in labels:
        assert type(ome_zarr_models.open_ome_zarr(f"{path_text}/labels/{name}")).__name__ == "ImageLabel"
    ran.append("ome-zarr-models")
    if importlib.util.find_spec("yaozarrs"):
        import yaozarrs

        yaozarrs.validate_zarr_store(path_text)
        for name in labels:
            yaozarrs.validate_zarr_store(f"{path_text}/labels/{name}")
        ran.append("yaozarrs")
    nodes = list(Reader(parse_url(path_text))())
    specs = {Path(str(n.zarr).split(" [")[0]).name: {type(s).__name__ for s in n.specs} for n in nodes}
    assert {"Multiscales", "OMERO"} <= specs[path.name]
    for name in labels:
        assert {"Label", "Multiscales"} <= specs[name]
    ran.append("ome-zarr Reader")
    if importlib.util.find_spec("napari_ome_zarr"):
        from napari_ome_zarr._reader import napari_get_reader

        reader = napari_get_reader(path_text)
        assert reader is not None, f"napari-ome-zarr has no reader for {path}"
        layers = reader(path_text)
        kinds = [layer[2] for layer in layers]
        assert kinds.count("image") == 1 and kinds.count("labels") == len(labels)
        image_meta = layers[kinds.index("image")][1]
        # The image opens visible: contrast from the data, not the dtype range.
        assert all(high < 65535 for _, high in image_meta["contrast_limits"])
        ran.append("napari-ome-zarr")
    return ran


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    return {v: make_slide(root / f"synth{v}.ome.zarr", size=(192, 192), seed=2, chunk_px=64,
                          ngff_version=v) for v in VERSIONS}


def _config() -> RunConfig:
    return RunConfig().with_overrides(**{"tiling.tile_px": 64})


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_synth_store(slides, version):
    ran = validate_store(Path(slides[version].path), ["gt_cells", "gt_nuclei"])
    assert "ome-zarr-models" in ran and "ome-zarr Reader" in ran


@pytest.mark.parametrize("version", VERSIONS)
def test_convert_store(tmp_path, version):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, np.random.default_rng(0).integers(0, 300, (3, 300, 280), np.uint16))
    out = tmp_path / "converted.ome.zarr"
    convert(source, out, pixel_size_um=0.5, channel_names=["a", "b", "c"], chunk_px=128,
            ngff_version=version)
    assert "ome-zarr-models" in validate_store(out, [])


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_run_in_place_and_after_expand(tmp_path, slides, client, version):
    store = tmp_path / "inplace.ome.zarr"
    make_slide(store, size=(192, 192), seed=2, chunk_px=64, ngff_version=version)
    run(store, _config(), client=client)
    expand_store(store, radius_um=2.0)
    labels = list_labels(store)
    assert {"cells", "nuclei", "cells_expanded"} <= set(labels)
    assert "ome-zarr-models" in validate_store(store, labels)


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_output_store_is_an_image_store(tmp_path, slides, client, version):
    """A separate output store is a valid image store that every verb accepts."""
    out = tmp_path / "out.ome.zarr"
    run(slides[version].path, _config(), output=out, client=client)
    assert "ome-zarr-models" in validate_store(out, ["cells", "nuclei"])
    cli = CliRunner()
    for args in (["info", str(out)], ["expand", str(out), "--radius-um", "1"],
                 ["measure", str(out), "--overwrite"],
                 ["report", str(out), "--out", str(tmp_path / "r.html")]):
        result = cli.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    assert "image:        none" not in cli.invoke(main, ["info", str(out)]).output
    assert "ome-zarr-models" in validate_store(out, list_labels(out))
    # The input was linked, not written: it still has only its own labels.
    assert list_labels(slides[version].path) == ["gt_cells", "gt_nuclei"]


def test_measure_writes_no_zarr_warning(tmp_path, slides):
    store = tmp_path / "m.ome.zarr"
    make_slide(store, size=(128, 128), seed=4, chunk_px=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=zarr.errors.ZarrUserWarning)
        measure_store(store, labels="gt_cells", nuclei="gt_nuclei")
        adata = read_anndata_zarr(store, DEFAULT_TABLE)
    assert adata.uns["spatialdata_attrs"]["region"] == "gt_cells"


@_needs("spatialdata")
@pytest.mark.parametrize("version", VERSIONS)
def test_export_spatialdata_read_back(tmp_path, slides, client, version):
    import spatialdata

    out = tmp_path / "out.ome.zarr"
    run(slides[version].path, _config(), output=out, client=client)
    target = tmp_path / "out.sdata.zarr"
    result = CliRunner().invoke(main, ["export", "spatialdata", str(out), str(target)])
    assert result.exit_code == 0, result.output
    data = spatialdata.read_zarr(target)
    assert set(data.labels) == {"cells", "nuclei"} and list(data.images) == ["image"]
    table = data.tables[DEFAULT_TABLE]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs == {"region": "cells", "region_key": "region", "instance_key": "cell_id"}
    cells = np.asarray(_full_resolution(data.labels["cells"]))
    np.testing.assert_array_equal(cells, read_labels(out, "cells").compute())
    # Instance ids are the label values: one row per cell of the label image.
    assert sorted(table.obs["cell_id"]) == sorted(np.unique(cells[cells > 0]))
    channels = list(_full_resolution(data.images["image"]).coords["c"].values)
    assert channels == list(table.var_names)
    again = CliRunner().invoke(main, ["export", "spatialdata", str(out), str(target)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def _full_resolution(element):
    """The full-resolution DataArray of a SpatialData raster element (multiscale or not)."""
    return element["scale0"]["image"] if hasattr(element, "children") else element


def test_export_without_spatialdata_says_how_to_install(tmp_path, slides, monkeypatch):
    # None in sys.modules makes ``import spatialdata`` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "spatialdata", None)
    result = CliRunner().invoke(main, ["export", "spatialdata", str(slides["0.5"].path),
                                       str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "tiled-seg[spatialdata]" in result.output
