"""Cell tables round-trip through Parquet and AnnData zarr (v2 and v3)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

from tiled_seg import __version__
from tiled_seg.errors import InputNotFoundError, OutputExistsError
from tiled_seg.io import tables
from tiled_seg.io.ngff import write_image
from tiled_seg.io.tables import (
    list_tables,
    read_anndata_zarr,
    read_parquet,
    read_parquet_metadata,
    table_metadata,
    write_anndata_zarr,
    write_parquet,
)
from tiled_seg.measure import to_anndata

NAMES = ["HH3 (89)", "CD3"]


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 5
    table = pd.DataFrame(
        {
            "cell_id": np.arange(1, n + 1),
            "area_px": rng.integers(10, 50, n),
            "centroid_y_px": rng.random(n) * 10,
            "centroid_x_px": rng.random(n) * 10,
        }
    )
    table["centroid_y_um"] = table["centroid_y_px"] * 0.5
    table["centroid_x_um"] = table["centroid_x_px"] * 0.5
    for name in NAMES:
        table[name] = rng.random(n)
        table[f"{name}_sum"] = table[name] * table["area_px"]
    return table


def _edges() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell_a": [1, 2, 1],
            "cell_b": [2, 3, 4],
            "kind": pd.Categorical(["touching", "centroid", "centroid"], categories=["touching", "centroid"]),
            "distance_um": [1.0, 2.0, 3.0],
        }
    )


def test_parquet_round_trip(tmp_path) -> None:
    table = _table()
    path = write_parquet(table, tmp_path / "t" / "cells.parquet")
    pd.testing.assert_frame_equal(read_parquet(path), table)
    with pytest.raises(OutputExistsError):
        write_parquet(table, path)
    with pytest.raises(InputNotFoundError):
        read_parquet(tmp_path / "missing.parquet")


def test_parquet_written_in_row_groups_reads_back_whole(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tables, "PARQUET_ROW_GROUP", 2)
    table = _table().assign(kind=pd.Categorical.from_codes([0, 1, 1, 0, 1], ["a", "b"]))
    path = write_parquet(table, tmp_path / "cells.parquet", metadata={"tiled_seg.source": "x"})
    assert pq.ParquetFile(path).num_row_groups == 3
    pd.testing.assert_frame_equal(read_parquet(path), table)
    assert read_parquet_metadata(path)["tiled_seg.source"] == "x"
    empty = read_parquet(write_parquet(table.iloc[:0], tmp_path / "empty.parquet"))
    assert list(empty.columns) == list(table.columns) and len(empty) == 0


@pytest.mark.slow
@pytest.mark.parametrize("version,zarr_format", [("0.5", 3), ("0.4", 2)])
def test_anndata_in_store(tmp_path, version, zarr_format) -> None:
    store = tmp_path / "s.ome.zarr"
    write_image(store, np.zeros((2, 8, 8), np.uint8), NAMES, 1.0, ngff_version=version)
    adata = to_anndata(_table(), NAMES, "labels/cells", _edges(), {"radius_um": 2.0})
    write_anndata_zarr(adata, store, "cells", region="labels/cells")
    assert list_tables(store) == ["cells"]
    back = read_anndata_zarr(store, "cells")
    assert list(back.var_names) == NAMES
    np.testing.assert_allclose(back.X, _table()[NAMES].to_numpy())
    assert list(back.obs["cell_id"]) == [1, 2, 3, 4, 5]
    assert back.uns["config"] == {"radius_um": 2.0}
    touching = back.obsp["touching"].toarray()
    assert touching[0, 1] == touching[1, 0] == 1 and touching.sum() == 2
    assert back.obsp["spatial_distances"][0, 3] == 3.0
    group = zarr.open_group(str(store / "tables" / "cells"))
    assert group.metadata.zarr_format == zarr_format
    # SpatialData's table conventions: attributes in uns and on the group.
    expected = {"region": "cells", "region_key": "region", "instance_key": "cell_id"}
    assert back.uns["spatialdata_attrs"] == expected
    assert {k: group.attrs[k] for k in expected} == expected
    assert group.attrs["spatialdata-encoding-type"] == "ngff:regions_table"
    assert back.obs["region"].dtype == "category" and set(back.obs["region"]) == {"cells"}
    with pytest.raises(OutputExistsError):
        write_anndata_zarr(adata, store, "cells", region="labels/cells")
    write_anndata_zarr(adata[:2].copy(), store, "cells", region="labels/cells", overwrite=True)
    assert read_anndata_zarr(store, "cells").n_obs == 2
    with pytest.raises(InputNotFoundError, match="present: cells"):
        read_anndata_zarr(store, "other")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_anndata_store_equals_anndatas_own_writer_byte_for_byte(tmp_path, monkeypatch, version) -> None:
    """``uns``, stored in one batch, lays out exactly the files ``write_elem`` writes."""
    config = {"tiling": {"tile_px": 1024, "halo": "auto"}, "cluster": {"slurm": {"cores": 8, "queue": None}},
              "channels": ["DNA1", "CD3"], "measure": True}
    adata = to_anndata(_table(), NAMES, "labels/cells", _edges(), config)
    stores = {kind: tmp_path / f"{kind}.ome.zarr" for kind in ("batched", "anndata")}
    for store in stores.values():
        write_image(store, np.zeros((2, 8, 8), np.uint8), NAMES, 1.0, ngff_version=version)
    write_anndata_zarr(adata, stores["batched"], "cells", region="labels/cells")
    monkeypatch.setattr(tables, "_write_table", lambda parent, name, table: ad.io.write_elem(parent, name, table))
    write_anndata_zarr(adata, stores["anndata"], "cells", region="labels/cells")
    batched, reference = (_files(stores[kind] / "tables") for kind in ("batched", "anndata"))
    assert any(name.startswith("cells/uns/config/cluster/slurm/") for name in reference)
    assert batched == reference
    assert read_anndata_zarr(stores["batched"], "cells").uns["config"]["tiling"]["tile_px"] == 1024


def test_parquet_metadata_and_units(tmp_path) -> None:
    table = _table().rename(columns={"area": "area_px"})
    table["area_um2"] = table["area_px"] * 0.25
    config = {"cluster": {"kubernetes": {"env": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}}}}
    metadata = table_metadata(table, pixel_size_um=0.5, source_image="/data/fov.ome.zarr",
                              labels="labels/cells", config=config)
    path = write_parquet(table, tmp_path / "cells.parquet", metadata=metadata)
    stored = read_parquet_metadata(path)
    assert stored["tiled_seg.pixel_size_um"] == "0.5"
    assert stored["tiled_seg.source_image"] == "/data/fov.ome.zarr"
    assert stored["tiled_seg.version"] == __version__
    units = json.loads(stored["tiled_seg.units"])
    assert units["area_px"] == "pixel" and units["area_um2"] == "micrometer^2"
    assert units["centroid_x_um"] == "micrometer"
    assert "wJalrXUtnFEMI" not in stored["tiled_seg.config"]
    # pandas' own metadata is kept: the frame reads back unchanged.
    pd.testing.assert_frame_equal(read_parquet(path), table)


def test_no_consolidated_metadata_warning(tmp_path) -> None:
    store = tmp_path / "s.ome.zarr"
    write_image(store, np.zeros((2, 8, 8), np.uint8), NAMES, 1.0, ngff_version="0.5")
    adata = to_anndata(_table(), NAMES, "labels/cells", _edges(), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_anndata_zarr(adata, store, "cell_table", region="cells")
        read_anndata_zarr(store, "cell_table")
        zarr.open_group(str(store / "tables" / "cell_table"), mode="r")


def test_anndata_without_copy_shares_the_channel_matrices_of_a_cell_table() -> None:
    from tiled_seg.measure import measure_arrays

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 40, (48, 48)).astype(np.uint32)
    image = rng.random((2, 48, 48))
    table = measure_arrays(labels, image, NAMES, 0.5, nuclei=np.where(labels % 3 == 0, labels, 0))
    shared = to_anndata(table, NAMES, "labels/cells", copy=False)
    copied = to_anndata(table, NAMES, "labels/cells")
    assert set(shared.layers) == set(copied.layers) == {"sum", "nuclear", "cytoplasm"}
    assert np.shares_memory(shared.X, table[NAMES[0]].to_numpy())
    assert not np.shares_memory(copied.X, table[NAMES[0]].to_numpy())
    np.testing.assert_array_equal(shared.X, copied.X)
    assert np.shares_memory(shared.obs["area_px"].to_numpy(), table["area_px"].to_numpy())
    assert not np.shares_memory(copied.obs["area_px"].to_numpy(), table["area_px"].to_numpy())
    pd.testing.assert_frame_equal(shared.obs, copied.obs)
    for layer in copied.layers:
        assert np.shares_memory(shared.layers[layer], table[f"{NAMES[0]}_{layer}"].to_numpy())
        np.testing.assert_array_equal(shared.layers[layer], copied.layers[layer])
    # Columns that are not views of one matrix (reordered here) are copied.
    swapped = table.rename(columns={NAMES[0]: NAMES[1], NAMES[1]: NAMES[0]})
    other = to_anndata(swapped, NAMES, "labels/cells", copy=False)
    assert not np.shares_memory(other.X, table[NAMES[0]].to_numpy())
    np.testing.assert_array_equal(other.X, swapped[NAMES].to_numpy())
