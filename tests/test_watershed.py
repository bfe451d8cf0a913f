"""Tests of the classical watershed backend."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage as ndi

from tiled_seg.segment.backends import SlideContext, get_segmenter_class
from tiled_seg.segment.backends.watershed import WatershedOptions, WatershedSegmenter

CONTEXT = SlideContext(pixel_size_um=1.0, nuclear_threshold=0.3, membrane_threshold=0.3)


def _disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _ring(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    return _disk(shape, centre, radius + 1) & ~_disk(shape, centre, radius - 1)


def _scene(
    centres: list[tuple[float, float]], shape: tuple[int, int] = (64, 80), ring_radius: float = 8
) -> tuple[np.ndarray, np.ndarray]:
    nuclear = np.zeros(shape, np.float32)
    membrane = np.zeros(shape, np.float32)
    for centre in centres:
        nuclear[_disk(shape, centre, 3.5)] = 0.9
        membrane[_ring(shape, centre, ring_radius)] = 0.8
    return nuclear, membrane


def _assert_valid(cells: np.ndarray, nuclei: np.ndarray) -> None:
    assert cells.dtype == np.int32 and nuclei.dtype == np.int32
    ids = np.unique(cells[cells > 0])
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    np.testing.assert_array_equal(np.unique(nuclei[nuclei > 0]), ids)
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
    for labels in (cells, nuclei):
        for k in ids:
            assert ndi.label(labels == k)[1] == 1


def test_three_cells_with_membrane_rings() -> None:
    centres = [(16.0, 16.0), (16.0, 50.0), (44.0, 32.0)]
    nuclear, membrane = _scene(centres)
    options = {"max_cell_diameter_um": 20.0, "max_expansion_um": 8.0}
    result = WatershedSegmenter(options).segment(nuclear, membrane, CONTEXT)
    _assert_valid(result.cells, result.nuclei)
    assert result.cells.max() == 3
    for centre in centres:
        k = result.cells[int(centre[0]), int(centre[1])]
        cell = result.cells == k
        # The cell fills its membrane ring (radius 8 px) and stays within the 10 px radius.
        assert cell[_disk(nuclear.shape, centre, 6)].all()
        assert not cell[~_disk(nuclear.shape, centre, 10)].any()


def test_cells_are_bounded_by_max_cell_diameter() -> None:
    nuclear, membrane = _scene([(32.0, 40.0)])
    membrane[:] = 0.8  # membrane foreground everywhere: only the bounds stop growth
    membrane[_disk(nuclear.shape, (32.0, 40.0), 5)] = 0.0
    options = {"max_cell_diameter_um": 12.0, "max_expansion_um": 20.0}
    result = WatershedSegmenter(options).segment(nuclear, membrane, CONTEXT)
    cell = result.cells == 1
    assert cell.sum() > result.nuclei.astype(bool).sum()
    assert not cell[~_disk(nuclear.shape, (32.0, 40.0), 6.01)].any()


@pytest.mark.parametrize("empty_membrane", [True, False])
def test_fallback_expansion_without_membrane_signal(empty_membrane: bool) -> None:
    nuclear, _ = _scene([(32.0, 40.0)])
    membrane = np.zeros_like(nuclear) if empty_membrane else None
    options = {"fallback_expansion_um": 2.0, "max_expansion_um": 6.0}
    result = WatershedSegmenter(options).segment(nuclear, membrane, CONTEXT)
    _assert_valid(result.cells, result.nuclei)
    nucleus = result.nuclei == 1
    grown = ndi.distance_transform_edt(~nucleus)
    cell = result.cells == 1
    assert cell.sum() > nucleus.sum()
    assert grown[cell].max() <= 2.0
    assert (grown <= 2.0).sum() == cell.sum()


def test_dim_nucleus_next_to_bright_one_is_found() -> None:
    nuclear, membrane = _scene([(32.0, 25.0), (32.0, 55.0)])
    nuclear[_disk(nuclear.shape, (32.0, 55.0), 3.5)] = 0.12
    context = SlideContext(1.0, nuclear_threshold=0.5, membrane_threshold=0.3)
    result = WatershedSegmenter({"threshold_scale": 0.2}).segment(nuclear, membrane, context)
    assert result.nuclei.max() == 2
    assert WatershedSegmenter().segment(nuclear, membrane, context).nuclei.max() == 1


def _random_scene(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    nuclear = np.zeros(shape, np.float32)
    membrane = np.zeros(shape, np.float32)
    for _ in range(40):
        centre = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        radius = rng.uniform(3, 5)
        nuclear[_disk(shape, centre, radius)] += rng.uniform(0.3, 1.0)
        membrane[_ring(shape, centre, radius + rng.uniform(2, 5))] += rng.uniform(0.2, 0.8)
    nuclear += rng.uniform(0, 0.1, shape).astype(np.float32)
    membrane += rng.uniform(0, 0.1, shape).astype(np.float32)
    return np.clip(nuclear, 0, 1), np.clip(membrane, 0, 1)


def test_translation_equivariance_in_the_interior() -> None:
    """A crop segments like the whole image away from its border: tiles do not seam."""
    nuclear, membrane = _random_scene(0, (120, 120))
    segmenter = WatershedSegmenter({"max_cell_diameter_um": 16.0})
    whole = segmenter.segment(nuclear, membrane, CONTEXT)
    y0, x0, margin = 17, 23, 20  # margin >= max cell diameter + filter reach
    crop = np.s_[y0 : y0 + 90, x0 : x0 + 85]
    part = segmenter.segment(nuclear[crop], membrane[crop], CONTEXT)
    for a_full, b_crop in ((whole.cells, part.cells), (whole.nuclei, part.nuclei)):
        a = a_full[crop][margin:-margin, margin:-margin]
        b = b_crop[margin:-margin, margin:-margin]
        assert a.max() > 5
        np.testing.assert_array_equal(a > 0, b > 0)
        pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
        # One-to-one correspondence: equal up to relabelling.
        assert np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size


def test_options_validation() -> None:
    with pytest.raises(ValidationError, match="nucleus_diam"):
        WatershedSegmenter({"nucleus_diam": 5.0})
    with pytest.raises(ValidationError, match="max_cell_diameter_um"):
        WatershedOptions(nucleus_diameter_um=30.0, max_cell_diameter_um=20.0)
    with pytest.raises(ValidationError, match="fallback_expansion_um"):
        WatershedOptions(fallback_expansion_um=5.0, max_expansion_um=2.0)
    with pytest.raises(ValidationError):
        WatershedOptions(smoothing_um=-1.0)


def test_registered_and_halo_from_options() -> None:
    cls = get_segmenter_class("watershed")
    assert cls is WatershedSegmenter
    assert cls({"max_cell_diameter_um": 18.0}).max_cell_diameter_um == 18.0


def test_empty_tile() -> None:
    zeros = np.zeros((32, 32), np.float32)
    result = WatershedSegmenter().segment(zeros, zeros, CONTEXT)
    assert result.cells.dtype == np.int32 and not result.cells.any()
    assert result.nuclei is not None and not result.nuclei.any()


def test_keep_largest_piece_splits_by_id_across_touching_labels() -> None:
    from tiled_seg.labels import keep_largest_piece

    labels = np.array([[5, 5, 6, 5], [0, 0, 6, 0], [7, 0, 0, 7]])
    expected = np.array([[5, 5, 6, 0], [0, 0, 6, 0], [7, 0, 0, 0]])
    np.testing.assert_array_equal(keep_largest_piece(labels), expected)
