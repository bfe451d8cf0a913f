"""Distributed per-cell measurement equals single-process regionprops."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner
from conftest import DATA, requires_data
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from tiled_seg._cli import main
from tiled_seg.errors import ChannelError, ConfigError, OutputExistsError
from tiled_seg.io.ngff import write_image, write_labels
from tiled_seg.io.regions import RegionReader
from tiled_seg.io.tables import read_anndata_zarr, read_parquet
from tiled_seg.measure import (
    HULL_COLUMNS,
    MeasureJob,
    block_partials,
    border_pairs,
    combine_partials,
    measure_arrays,
    measure_block,
    measure_blocks,
    measure_store,
    nucleus_per_cell,
    touching_pairs,
)
from tiled_seg.tiling import Box, plan_blocks

NAMES = ["dna", "cd3", "ker"]


def _slide(shape=(90, 110), n=30, seed=1):
    """Cells ~20 px wide (expanded seeds) with a few holes, and a 3-channel image."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint32)
    points = rng.choice(shape[0] * shape[1], size=n, replace=False)
    seeds.ravel()[points] = np.arange(1, n + 1)
    labels = expand_labels(seeds, 11)
    labels[rng.random(shape) < 0.02] = 0
    image = rng.integers(0, 4000, (len(NAMES), *shape)).astype(np.uint16)
    return labels, image


def _reference(labels, image, properties):
    table = regionprops_table(labels, intensity_image=image.transpose(1, 2, 0), properties=properties)
    return pd.DataFrame(table)


def _job(labels, image=None, nuclei=None, **options) -> MeasureJob:
    image = np.zeros((1, *labels.shape)) if image is None else image
    return MeasureJob(
        RegionReader(labels), RegionReader(image, ("c", "y", "x")),
        None if nuclei is None else RegionReader(nuclei), **options,
    )


@pytest.mark.parametrize("label_chunks,image_chunks,block_px", [
    (16, (1, 16, 16), 16), (13, (3, 20, 24), 26), (16, (1, 16, 16), 1024),
])
def test_intensities_match_regionprops(label_chunks, image_chunks, block_px) -> None:
    labels, image = _slide()
    table = measure_arrays(
        da.from_array(labels, chunks=label_chunks),
        da.from_array(image, chunks=image_chunks),
        NAMES, 0.5, block_px=block_px,
    )
    ref = _reference(labels, image, ("label", "area", "centroid", "intensity_mean", "bbox"))
    assert np.array_equal(table["cell_id"], ref["label"])
    assert np.array_equal(table["area_px"], ref["area"])
    np.testing.assert_allclose(table["area_um2"], ref["area"] * 0.25, rtol=1e-12)
    np.testing.assert_allclose(table["centroid_y_px"], ref["centroid-0"], rtol=1e-6)
    np.testing.assert_allclose(table["centroid_x_px"], ref["centroid-1"], rtol=1e-6)
    np.testing.assert_allclose(table["centroid_x_um"], ref["centroid-1"] * 0.5, rtol=1e-6)
    for index, name in enumerate(NAMES):
        np.testing.assert_allclose(table[name], ref[f"intensity_mean-{index}"], rtol=1e-6)
    for index, corner in enumerate(("min_y", "min_x", "max_y", "max_x")):
        assert np.array_equal(table[f"bbox_{corner}_px"], ref[f"bbox-{index}"])


@pytest.mark.slow
@pytest.mark.parametrize("block_px", [16, 48, 1024])
def test_morphology_matches_regionprops(block_px) -> None:
    labels, image = _slide(seed=2)
    # Blocks of 16 px cut every ~20 px cell: perimeter and moments merge across blocks.
    table = measure_arrays(
        da.from_array(labels, chunks=16), da.from_array(image, chunks=(1, 16, 16)), NAMES, 0.5,
        morphology="full", block_px=block_px,
    )
    ref = _reference(
        labels, image,
        ("label", "perimeter", "eccentricity", "orientation", "solidity", "axis_major_length",
         "axis_minor_length", "area_filled", "equivalent_diameter_area"),
    )
    pairs = {
        "perimeter_px": "perimeter", "eccentricity": "eccentricity", "solidity": "solidity",
        "orientation_rad": "orientation",
        "major_axis_length_px": "axis_major_length", "minor_axis_length_px": "axis_minor_length",
    }
    for ours, theirs in pairs.items():
        np.testing.assert_allclose(table[ours], ref[theirs], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(table["perimeter_um"], ref["perimeter"] * 0.5, rtol=1e-9)
    np.testing.assert_allclose(table["major_axis_length_um"], ref["axis_major_length"] * 0.5, rtol=1e-9)
    np.testing.assert_allclose(table["fill"], table["area_px"] / ref["area_filled"], rtol=1e-12)
    np.testing.assert_allclose(
        table["aspect_ratio"], ref["axis_major_length"] / ref["equivalent_diameter_area"], rtol=1e-12
    )
    assert set(HULL_COLUMNS) <= set(table.columns)
    assert (table["fill"] < 1).any(), "the random holes should leave some cells with fill < 1"


def test_default_morphology_has_no_hull_columns_and_orientation_edge_cases() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[2:9, 2:9] = 1  # square: a == c, b == 0
    labels[12:14, 2:30] = 2  # horizontal bar
    labels[16:36, 20:22] = 3  # vertical bar
    for i in range(8):
        labels[20 + i, 2 + i : 4 + i] = 4  # diagonal
    table = measure_arrays(labels, np.ones((1, 40, 40)), ["one"], 1.0)
    assert not set(HULL_COLUMNS) & set(table.columns)
    ref = _reference(labels, np.ones((1, 40, 40)), ("label", "orientation", "eccentricity", "perimeter"))
    np.testing.assert_allclose(table["orientation_rad"], ref["orientation"], atol=1e-12)
    np.testing.assert_allclose(table["perimeter_px"], ref["perimeter"], rtol=1e-12)
    np.testing.assert_allclose(table["eccentricity"], ref["eccentricity"], atol=1e-12)


def test_mesmer_shape_metrics_on_known_shapes() -> None:
    labels = np.zeros((60, 80), np.int32)
    labels[5:25, 5:25] = 1  # square: convex, no concavity
    labels[30:55, 30:70] = 2  # rectangle with two deep notches
    labels[30:42, 40:44] = 0
    labels[43:55, 55:59] = 0
    table = measure_arrays(
        da.from_array(labels, chunks=16), da.zeros((1, 60, 80), chunks=16), ["z"], 1.0, morphology="full"
    )
    square, notched = table.iloc[0], table.iloc[1]
    assert square["concavities"] == 0 and notched["concavities"] == 2
    assert square["asymmetry"] == pytest.approx(0.0)
    assert notched["asymmetry"] > 0
    assert square["perimeter2_over_area"] < notched["perimeter2_over_area"]


def test_partials_combine_in_any_grouping() -> None:
    labels, image = _slide(shape=(40, 40), n=8, seed=3)
    whole = block_partials(labels, image, (0, 0))
    quarters = [
        block_partials(labels[ys, xs], image[:, ys, xs], (ys.start, xs.start))
        for ys in (slice(0, 17), slice(17, 40))
        for xs in (slice(0, 25), slice(25, 40))
    ]
    nested = combine_partials([combine_partials(quarters[:3]), quarters[3]])
    for key in whole:
        np.testing.assert_array_equal(nested[key], whole[key])


def test_dense_and_sparse_ids_merge_to_the_same_partials() -> None:
    """Dense ids merge by lookup, sparse ids by sorting: the same sums, boxes and pairs."""
    labels, image = _slide(shape=(60, 60), n=12, seed=6)
    image = image.astype(np.float32) / 7  # float sums: the order of additions shows
    nuclei = np.where(image[0] > image[0].mean(), labels, 0)
    step = 10**6  # ids 10**6 apart are far sparser than the rows: the sorted merge

    def parts(scale: int) -> list[dict[str, np.ndarray]]:
        return [
            block_partials(
                labels[ys, xs] * scale, image[:, ys, xs], (ys.start, xs.start), nuclei[ys, xs] * scale
            )
            for ys in (slice(0, 13), slice(13, 31), slice(31, 60))
            for xs in (slice(0, 29), slice(29, 60))
        ]

    dense, sparse = combine_partials(parts(1)), combine_partials(parts(step))
    np.testing.assert_array_equal(sparse["label"], dense["label"] * step)
    np.testing.assert_array_equal(sparse["pairs"][:, :2], dense["pairs"][:, :2] * step)
    np.testing.assert_array_equal(sparse["pairs"][:, 2], dense["pairs"][:, 2])
    for key in dense.keys() - {"label", "pairs"}:
        np.testing.assert_array_equal(sparse[key], dense[key], err_msg=key)
    whole = block_partials(labels, image, (0, 0), nuclei)
    for key in whole.keys() - {"sum", "nuc_sum"}:
        np.testing.assert_array_equal(dense[key], whole[key], err_msg=key)
    np.testing.assert_allclose(dense["sum"], whole["sum"], rtol=1e-12)


def test_nuclear_compartments_and_linkage() -> None:
    labels, image = _slide(seed=4)
    # Nucleus k inside cell k on a scattered two thirds of its pixels; cells 3
    # and 7 have none.
    nuclei = np.where(np.isin(labels, [3, 7]), 0, labels)
    nuclei[(image[0] % 3) == 0] = 0
    table = measure_arrays(
        da.from_array(labels, chunks=16), da.from_array(image, chunks=(1, 16, 16)),
        NAMES, 1.0, da.from_array(nuclei, chunks=16), block_px=16,
    )
    for _, row in table.iterrows():
        cell = labels == row["cell_id"]
        nuc = cell & (nuclei > 0)
        cyto = cell & ~(nuclei > 0)
        assert row["nucleus_id"] == (row["cell_id"] if nuc.any() else 0)
        assert row["nc_ratio"] == pytest.approx(nuc.sum() / cell.sum())
        for index, name in enumerate(NAMES):
            expected_nuc = image[index][nuc].mean() if nuc.any() else np.nan
            np.testing.assert_allclose(row[f"{name}_nuclear"], expected_nuc, rtol=1e-9)
            np.testing.assert_allclose(row[f"{name}_cytoplasm"], image[index][cyto].mean(), rtol=1e-9)
    assert table.loc[table["cell_id"] == 3, "nc_ratio"].item() == 0


def test_link_nuclei_by_maximum_overlap() -> None:
    # Nucleus 5 straddles cells 1 (10 px) and 2 (4 px): it belongs to cell 1.
    # Cell 2 also holds nucleus 6 (8 px) and keeps it; cell 3 overlaps only
    # nucleus 7, which belongs to cell 1 by larger overlap elsewhere.
    pairs = np.array([[1, 5, 10], [2, 5, 4], [2, 6, 8], [1, 7, 2], [3, 7, 1]])
    nucleus_id, overlap = nucleus_per_cell(pairs, np.array([1, 2, 3, 4]))
    assert nucleus_id.tolist() == [5, 6, 0, 0]
    assert overlap.tolist() == [10, 8, 0, 0]


@pytest.mark.parametrize("connectivity", [1, 2])
def test_touching_pairs_across_blocks(connectivity) -> None:
    labels, _ = _slide(seed=5)
    expected = touching_pairs(labels, connectivity)
    job = _job(da.from_array(labels, chunks=11), connectivity=connectivity)
    got = measure_blocks(job, plan_blocks(labels.shape, (11, 11), 11)).touching
    assert np.array_equal(got, expected)
    assert len(expected) > 10
    # A diagonal-only contact counts with 8- but not 4-connectivity.
    diagonal = np.array([[1, 0], [0, 2]])
    assert touching_pairs(diagonal, connectivity).tolist() == ([] if connectivity == 1 else [[1, 2]])


def _border_brute_force(labels, dmax):
    """Pairs ``a < b`` whose closest pixel centres are <= dmax apart, as steinbock finds them."""
    ids = np.unique(labels[labels > 0])
    rows = []
    for a in ids:
        # Distance of every pixel to the nearest pixel of cell a.
        to_a = ndimage.distance_transform_edt(labels != a)
        closest = ndimage.minimum(to_a, labels, index=ids)
        rows += [(a, b, d) for b, d in zip(ids, closest) if b > a and d <= dmax]
    return pd.DataFrame(rows, columns=["cell_a", "cell_b", "distance_px"])


@pytest.mark.parametrize("dmax", [1.0, 2.5, 5.0, 7.3])
def test_border_edges_match_brute_force(dmax) -> None:
    labels, _ = _slide(shape=(48, 56), n=14, seed=8)
    expected = _border_brute_force(labels, dmax)
    # Blocks of 5 px: smaller than the cells and than the larger dmax values.
    got = measure_blocks(_job(labels, border_dmax_px=dmax), plan_blocks(labels.shape, (5, 5), 5))
    assert np.array_equal(got.border, expected[["cell_a", "cell_b"]].to_numpy())
    np.testing.assert_allclose(got.border_px, expected["distance_px"], rtol=1e-12)
    pairs, distances = border_pairs(labels, dmax)
    assert np.array_equal(pairs, got.border)
    np.testing.assert_allclose(distances, got.border_px, rtol=1e-12)
    assert len(expected) > 5
    if dmax == 1.0:
        # Closest pixels 1 px apart means touching by an edge.
        assert np.array_equal(pairs, touching_pairs(labels, 1))
    else:
        assert (expected["distance_px"] > 1).any(), "dmax should reach cells that do not touch"


def test_border_pairs_across_background_gap() -> None:
    labels = np.zeros((12, 12), np.int32)
    labels[1:4, 1:4] = 1
    labels[6:9, 5:8] = 2  # closest pixels (3, 3) and (6, 5): sqrt(13) px apart
    pairs, distances = border_pairs(labels, np.sqrt(13))
    assert pairs.tolist() == [[1, 2]] and distances[0] == pytest.approx(np.sqrt(13))
    assert border_pairs(labels, 3.6)[0].size == 0
    with pytest.raises(ConfigError, match="> 0"):
        border_pairs(labels, 0.0)


def test_measure_block_alone_equals_its_share_of_the_slide() -> None:
    labels, image = _slide(seed=9)
    core = Box(20, 52, 30, 70)
    window = core.grow(2, labels.shape)
    part = measure_block(
        labels[window.slices], core.relative_to(window), (window.y0, window.x0),
        image[(slice(None), *core.slices)],
    )
    expected = block_partials(labels[core.slices], image[(slice(None), *core.slices)], (core.y0, core.x0))
    for key, value in expected.items():
        np.testing.assert_array_equal(part.cells[key], value)
    assert (part.cells["perimeter"] > 0).all()
    assert len(part.touching) > 0


@pytest.mark.slow
def test_result_independent_of_chunking() -> None:
    labels, image = _slide(seed=6)
    tables = [
        measure_arrays(
            da.from_array(labels, chunks=c), da.from_array(image, chunks=(1, c, c)), NAMES, 1.0,
            block_px=c, morphology="full",
        )
        for c in (9, 16, 200)
    ]
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other)


@pytest.fixture(params=["0.5", "0.4"])
def store(tmp_path, request):
    labels, image = _slide(seed=7)
    path = tmp_path / "slide.ome.zarr"
    write_image(path, image, NAMES, 0.5, chunk_px=32, ngff_version=request.param)
    write_labels(path, "cells", labels, 0.5, chunk_px=16)
    write_labels(path, "nuclei", labels * (image[0] > 1000), 0.5, chunk_px=16)
    return path, labels, image


def test_measure_store_writes_tables(store, tmp_path) -> None:
    path, labels, image = store
    result = measure_store(
        path, distance_um=8.0, h5ad=tmp_path / "cells.h5ad", steinbock_dir=tmp_path / "sb",
        config={"backend": "test"},
    )
    n = len(np.unique(labels)) - 1
    assert result.n_cells == n and result.table_shape == result.table.shape
    adata = read_anndata_zarr(path, "cell_table")
    assert adata.shape == (n, len(NAMES)) and list(adata.var_names) == NAMES
    np.testing.assert_allclose(adata.X, result.table[NAMES].to_numpy())
    assert adata.uns["config"]["backend"] == "test"
    assert adata.layers["nuclear"].shape == (n, len(NAMES))
    np.testing.assert_allclose(adata.obsm["spatial"][:, 0], result.table["centroid_x_um"])
    attrs = zarr.open_group(str(path / "tables" / "cell_table")).attrs.asdict()
    assert {k: attrs[k] for k in ("region", "region_key", "instance_key")} == {
        "region": "cells", "region_key": "region", "instance_key": "cell_id"}
    assert zarr.open_group(str(path)).metadata.zarr_format == zarr.open_group(str(path / "tables" / "cell_table")).metadata.zarr_format
    parquet = read_parquet(result.paths["parquet"])
    pd.testing.assert_frame_equal(parquet, result.table)
    # The centroid graph equals a brute-force search within 8 um.
    points = result.table[["centroid_y_um", "centroid_x_um"]].to_numpy()
    close = np.argwhere(np.triu(cdist(points, points) <= 8.0, k=1))
    graph = result.edges[result.edges["kind"] == "centroid"]
    assert len(graph) == len(close) and adata.obsp["spatial_connectivities"].nnz == 2 * len(close)
    steinbock = pd.read_csv(result.paths["steinbock_neighbors"])
    assert list(steinbock.columns) == ["Object", "Neighbor", "Distance"] and len(steinbock) == 2 * len(close)
    intensities = pd.read_csv(result.paths["steinbock_intensities"])
    assert list(intensities.columns) == ["Object", *NAMES]
    with pytest.raises(OutputExistsError):
        measure_store(path)


@pytest.mark.slow
def test_measure_store_border_neighbours(store, tmp_path) -> None:
    path, labels, _ = store
    result = measure_store(
        path, distance_um=2.0, neighbours="borders", steinbock_dir=tmp_path / "sb", nuclei=None
    )
    expected = _border_brute_force(labels, 2.0 / 0.5)
    graph = result.edges[result.edges["kind"] == "border"]
    assert np.array_equal(graph[["cell_a", "cell_b"]].to_numpy(), expected[["cell_a", "cell_b"]].to_numpy())
    np.testing.assert_allclose(graph["distance_um"], expected["distance_px"] * 0.5, rtol=1e-12)
    assert list(result.edges["kind"].cat.categories) == ["touching", "border"]
    adata = read_anndata_zarr(path, "cell_table")
    assert adata.obsp["spatial_connectivities"].nnz == 2 * len(expected)
    assert adata.obsp["spatial_distances"].max() == pytest.approx(expected["distance_px"].max() * 0.5)
    steinbock = pd.read_csv(result.paths["steinbock_neighbors"])
    assert len(steinbock) == 2 * len(expected)
    first = steinbock[steinbock["Object"] < steinbock["Neighbor"]].reset_index(drop=True)
    np.testing.assert_allclose(first["Distance"], expected["distance_px"], rtol=1e-9)
    parquet = read_parquet(result.paths["neighbours"])
    assert (parquet["kind"] == "border").sum() == len(expected)


def test_measure_store_channel_subset_and_errors(store) -> None:
    path, labels, image = store
    result = measure_store(path, channels=["ker"], nuclei=None, outputs=("parquet",), table_name="ker")
    assert "ker" in result.table.columns and "dna" not in result.table.columns
    assert "nucleus_id" not in result.table.columns
    with pytest.raises(ChannelError, match="available"):
        measure_store(path, channels=["nope"], table_name="x")


@pytest.mark.slow
def test_cli_measure(store, tmp_path) -> None:
    path, labels, _ = store
    run = CliRunner().invoke(main, ["measure", str(path), "--steinbock", str(tmp_path / "sb")])
    assert run.exit_code == 0, run.output
    assert f"measured {len(np.unique(labels)) - 1} cells" in run.output
    again = CliRunner().invoke(main, ["measure", str(path)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert CliRunner().invoke(main, ["measure", str(path), "--overwrite"]).exit_code == 0
    borders = CliRunner().invoke(
        main, ["measure", str(path), "--overwrite", "--neighbours", "borders", "--distance-um", "1.5",
               "--steinbock", str(tmp_path / "sb")],
    )
    assert borders.exit_code == 0, borders.output
    steinbock = pd.read_csv(tmp_path / "sb" / "neighbors" / "slide.csv")
    assert len(steinbock) == 2 * len(_border_brute_force(labels, 1.5 / 0.5))
    assert steinbock["Distance"].max() <= 3.0
    wrong = CliRunner().invoke(main, ["measure", str(path), "--overwrite", "--neighbours", "knn"])
    assert wrong.exit_code == 2 and "borders" in wrong.output


FOV8 = "mibi_tnbc_fov8"


def _fov8_store(tmp_path):
    """The fov8 MIBI slide with its Mesmer cells and geometric 'nuclei' (cell interiors)."""
    import tifffile
    from scipy import ndimage

    path = tmp_path / "fov8.ome.zarr"
    source = DATA / FOV8 / "fov8_mibitiff_22ch.tiff"
    try:
        from tiled_seg.io.convert import convert
    except ImportError:  # the converter is optional here
        with tifffile.TiffFile(source) as tif:
            names = [page.tags["PageName"].value for page in tif.pages]
            image = np.stack([page.asarray() for page in tif.pages])
        write_image(path, image, names, 0.390625)
    else:
        convert(source, path, pixel_size_um=0.390625)
    cells = tifffile.imread(DATA / FOV8 / "fov8_mesmer_labels.tif").astype(np.uint32)
    write_labels(path, "cells", cells, 0.390625)
    # Nuclei independent of HH3: each cell's interior, >= 3 px from its border.
    boundary = np.zeros_like(cells, bool)
    boundary[:-1] |= cells[:-1] != cells[1:]
    boundary[1:] |= cells[:-1] != cells[1:]
    boundary[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    boundary[:, 1:] |= cells[:, :-1] != cells[:, 1:]
    interior = ndimage.distance_transform_edt(~boundary & (cells > 0))
    write_labels(path, "nuclei", np.where(interior >= 3, cells, 0), 0.390625)
    return path, cells


@pytest.mark.slow
@requires_data(f"{FOV8}/fov8_mibitiff_22ch.tiff")
@requires_data(f"{FOV8}/fov8_mesmer_labels.tif")
def test_fov8_mibi_biology(tmp_path) -> None:
    from scipy.spatial import cKDTree

    path, cells = _fov8_store(tmp_path)
    run = CliRunner().invoke(main, ["measure", str(path), "--distance-um", "15"])
    assert run.exit_code == 0, run.output
    table = read_parquet(path / "tables" / "cell_table.parquet")
    n = len(np.unique(cells)) - 1
    assert len(table) == n == 553
    print(f"fov8 table shape {table.shape}")
    # Histone H3 is nuclear: higher in the cell interior than in its rim.
    both = table.dropna(subset=["HH3 (89)_nuclear", "HH3 (89)_cytoplasm"])
    higher = (both["HH3 (89)_nuclear"] > both["HH3 (89)_cytoplasm"]).mean()
    print(f"HH3 nuclear > cytoplasm in {higher:.1%} of {len(both)} cells")
    assert len(both) > 0.8 * n and higher > 0.7
    # PanKeratin-high cells (tumour) cluster into nests.
    high = (table["PanKeratin (171)"] > table["PanKeratin (171)"].quantile(0.75)).to_numpy()
    points = table[["centroid_y_um", "centroid_x_um"]].to_numpy()
    _, neighbours = cKDTree(points).query(points, k=6)
    same = high[neighbours[high, 1:]].mean()
    print(f"PanKeratin-high: {high.mean():.1%} of cells; {same:.1%} of their 5 nearest neighbours")
    assert same > 2 * high.mean()
