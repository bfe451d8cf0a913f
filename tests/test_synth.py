"""Tests of tiled_seg.synth: determinism, chunking, ground truth, NGFF output, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from skimage.measure import regionprops

from tiled_seg._cli import main
from tiled_seg.errors import ChannelError, ConfigError, OutputExistsError, PixelSizeError
from tiled_seg.io.ngff import list_labels, open_slide, read_labels
from tiled_seg.synth import CELL_TYPES, channel_names_for, make_slide, synth_arrays


def _compute(size=(160, 200), **kwargs):
    image, cells, nuclei, names = synth_arrays(size, **kwargs)
    return image.compute(), cells.compute(), nuclei.compute(), names


@pytest.fixture(scope="module")
def slide_256():
    return _compute((256, 256), seed=5)


def test_same_seed_identical_different_seed_differs():
    first = _compute(seed=3, n_channels=6)
    second = _compute(seed=3, n_channels=6)
    other = _compute(seed=4, n_channels=6)
    for a, b in zip(first[:3], second[:3]):
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"spillover": 0.3, "n_channels": 14}, {"pixel_size_um": 0.5, "n_channels": 4}],
)
def test_chunk_size_does_not_change_pixels(kwargs):
    # 37 px chunks cut cells everywhere and do not align with anything.
    a = _compute((150, 170), seed=11, chunk_px=256, **kwargs)
    b = _compute((150, 170), seed=11, chunk_px=37, **kwargs)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)


def test_ids_consecutive_and_nuclei_inside_their_cells(slide_256):
    _, cells, nuclei, _ = slide_256
    ids = np.unique(cells)
    assert ids[0] == 0 and ids.size > 100
    np.testing.assert_array_equal(ids[1:], np.arange(1, ids.size))
    inside = nuclei > 0
    np.testing.assert_array_equal(cells[inside], nuclei[inside])
    # Every cell has a nucleus, so the id sets agree.
    np.testing.assert_array_equal(np.unique(nuclei), ids)
    assert cells.dtype == nuclei.dtype == np.uint32


def test_ids_consecutive_across_chunks_of_a_wide_slide():
    # Wider than one block of prefix counts (64 generation columns).
    _, cells, _, _ = _compute((40, 1000), seed=2, chunk_px=96)
    ids = np.unique(cells)
    np.testing.assert_array_equal(ids, np.arange(ids.size))


def test_sizes_at_one_and_half_um_per_px():
    _, cells, nuclei, _ = _compute((256, 256), seed=1, n_channels=3)
    cell_d = np.median([r.equivalent_diameter_area for r in regionprops(cells)])
    nucleus_d = np.median([r.equivalent_diameter_area for r in regionprops(nuclei)])
    assert 10 <= cell_d <= 20
    assert 5 <= nucleus_d <= 9
    _, fine, _, _ = _compute((256, 256), seed=1, n_channels=3, pixel_size_um=0.5)
    fine_d = np.median([r.equivalent_diameter_area for r in regionprops(fine)])
    assert 1.7 <= fine_d / cell_d <= 2.3


def test_dense_and_empty_regions_exist():
    _, cells, _, _ = _compute((512, 512), seed=0, n_channels=3)
    occupied = (cells > 0).reshape(8, 64, 8, 64).mean(axis=(1, 3))
    assert occupied.max() > 0.6
    assert occupied.min() < 0.3


def test_type_markers_exclusive_and_membrane_on_boundary(slide_256):
    image, cells, _, names = slide_256
    n = int(cells.max()) + 1
    area = np.bincount(cells.ravel(), minlength=n)[1:]

    def mean(channel):
        return np.bincount(cells.ravel(), image[names.index(channel)].ravel(), n)[1:] / area

    cd3, keratin, cd20 = mean("CD3"), mean("PanKeratin"), mean("CD20")
    cd3_pos, keratin_pos, cd20_pos = cd3 > 4, keratin > 4, cd20 > 4
    assert cd3_pos.sum() > 10 and keratin_pos.sum() > 10
    assert (cd3_pos & keratin_pos).sum() <= 0.02 * n
    assert (cd3_pos & cd20_pos).sum() <= 0.02 * n
    # Membrane markers sit on the cell boundary, not inside.
    from skimage.segmentation import find_boundaries

    edge = find_boundaries(cells, mode="inner") & (cells > 0)
    interior = (cells > 0) & ~find_boundaries(cells, mode="thick")
    membrane = image[names.index("NaKATPase")].astype(float)
    assert membrane[edge].mean() > 1.5 * membrane[interior].mean()
    dna = image[names.index("DNA1")].astype(float)
    assert dna[slide_256[2] > 0].mean() > 5 * dna[cells == 0].mean()


def test_spillover_moves_signal_across_boundaries_only():
    clean = _compute((128, 128), seed=9, n_channels=6)
    spilled = _compute((128, 128), seed=9, n_channels=6, spillover=0.4)
    np.testing.assert_array_equal(clean[1], spilled[1])
    changed = np.any(clean[0] != spilled[0], axis=0)
    assert changed.any()
    # Only pixels on or near a boundary between two cells change.
    from scipy import ndimage

    cells = clean[1]
    touching = (ndimage.maximum_filter(cells, size=7) != ndimage.minimum_filter(cells, size=7))
    assert not (changed & ~touching).any()


def test_channel_names():
    assert channel_names_for(3) == ["DNA1", "NaKATPase", "CD3"]
    names = channel_names_for(30)
    assert len(set(names)) == 30
    assert names[:6] == ["DNA1", "NaKATPase", "CD3", "CD20", "CD68", "PanKeratin"]
    assert "DNA2" in names and names[-1] == "Marker_29"


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_make_slide_writes_ngff_and_ground_truth(tmp_path, version):
    path = tmp_path / "s.ome.zarr"
    info = make_slide(path, size=(140, 150), n_channels=5, seed=6, chunk_px=64,
                      ngff_version=version, pixel_size_um=0.8)
    slide = open_slide(path)
    assert slide.ngff_version == version
    assert slide.channel_names == info.channel_names == tuple(channel_names_for(5))
    assert slide.pixel_size_um == pytest.approx(0.8)
    assert info.shape == (5, 140, 150) and slide.data.shape == info.shape
    assert {"gt_cells", "gt_nuclei"} <= set(list_labels(path))
    image, cells, nuclei, _ = _compute((140, 150), n_channels=5, seed=6, pixel_size_um=0.8)
    np.testing.assert_array_equal(slide.data.compute(), image)
    np.testing.assert_array_equal(read_labels(path, "gt_cells").compute(), cells)
    np.testing.assert_array_equal(read_labels(path, "gt_nuclei").compute(), nuclei)
    assert info.n_cells == int(cells.max())
    assert sum(info.cell_type_counts.values()) == info.n_cells
    assert set(info.cell_type_counts) == set(CELL_TYPES)


def test_existing_output_needs_overwrite(tmp_path):
    path = tmp_path / "s.ome.zarr"
    make_slide(path, size=(40, 40), n_channels=3)
    with pytest.raises(OutputExistsError):
        make_slide(path, size=(40, 40), n_channels=3)
    info = make_slide(path, size=(48, 40), n_channels=3, overwrite=True)
    assert open_slide(path).data.shape == info.shape == (3, 48, 40)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": (0, 10)}, ConfigError),
        ({"size": (10, -3)}, ConfigError),
        ({"size": (10,)}, ConfigError),
        ({"n_channels": 2}, ChannelError),
        ({"pixel_size_um": 0.0}, PixelSizeError),
        ({"pixel_size_um": 5.0}, PixelSizeError),
        ({"density": 0.0}, ConfigError),
        ({"spillover": 0.9}, ConfigError),
        ({"chunk_px": 0}, ConfigError),
    ],
)
def test_invalid_arguments(kwargs, error):
    arguments = {"size": (32, 32), **kwargs}
    with pytest.raises(error):
        synth_arrays(**arguments)


def test_cli_writes_slide_and_reports(tmp_path):
    out = tmp_path / "cli.ome.zarr"
    runner = CliRunner()
    result = runner.invoke(main, ["synth", str(out), "--size", "96", "128", "--channels", "4",
                                  "--seed", "2", "--ngff-version", "0.4", "--chunk-px", "64"])
    assert result.exit_code == 0, result.output
    slide = open_slide(out)
    n_cells = int(read_labels(out, "gt_cells").max().compute())
    assert slide.ngff_version == "0.4" and slide.data.shape == (4, 96, 128)
    assert str(out) in result.output and f"{n_cells} cells" in result.output
    again = runner.invoke(main, ["synth", str(out), "--size", "96", "128"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(main, ["synth", str(tmp_path / "x.zarr"), "--channels", "2"])
    assert bad.exit_code == 2 and "at least 3 channels" in bad.output
