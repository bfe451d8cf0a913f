"""The compiled per-block kernels against plain numpy / scipy / skimage on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from tiled_seg.measure import block_partials, perimeter_partials, touching_pairs
from tiled_seg.measure._intensity import label_index
from tiled_seg.tiling import Box


def _labels(shape=(45, 53), seed=0, ids=None):
    """Seeds grown until they touch, with background between some; ids 1.. or ``ids``."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int64)
    points = rng.integers(0, shape, size=(25, 2))
    seeds[points[:, 0], points[:, 1]] = np.arange(1, 26)
    labels = expand_labels(seeds, distance=5)
    if ids is not None:
        labels = np.concatenate([[0], ids])[labels % (len(ids) + 1)]
    return labels


@pytest.mark.parametrize("ids", [None, np.array([3, 10**9 + 7, 42, 2**31 + 5])])
def test_label_index_dense_and_wide_ranges(ids) -> None:
    labels = _labels(ids=ids).astype(np.int64)
    got_ids, index = label_index(labels)
    expected = np.unique(labels[labels > 0])
    assert np.array_equal(got_ids, expected)
    flat = labels.ravel()
    assert np.array_equal(index[flat == 0], np.full((flat == 0).sum(), -1))
    assert np.array_equal(got_ids[index[flat > 0]], flat[flat > 0])


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64, np.bool_])
@pytest.mark.parametrize("with_nuclei", [False, True])
def test_block_partials_equal_scipy_sums(dtype, with_nuclei) -> None:
    labels = _labels(seed=1).astype(np.uint32)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 2 if dtype == np.bool_ else 4000, size=(3, *labels.shape)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        image = image / 7
    nuclei = np.where(rng.random(labels.shape) < 0.5, labels, 0) if with_nuclei else None
    origin = (100, 2000)
    parts = block_partials(labels, image, origin, nuclei)
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(parts["label"], ids)
    assert np.array_equal(parts["count"], ndimage.sum_labels(np.ones(labels.shape), labels, ids))
    for c in range(3):
        np.testing.assert_allclose(parts["sum"][:, c], ndimage.sum_labels(image[c].astype(float), labels, ids),
                                   rtol=1e-12)
    y, x = np.indices(labels.shape)
    y, x = y + origin[0], x + origin[1]
    for key, values in (("sum_y", y), ("sum_x", x), ("sum_yy", y * y), ("sum_xx", x * x), ("sum_xy", x * y)):
        assert np.array_equal(parts[key], ndimage.sum_labels(values, labels, ids).astype(np.int64)), key
    boxes = regionprops_table(labels, properties=("label", "bbox"))
    assert np.array_equal(parts["min_y"], boxes["bbox-0"] + origin[0])
    assert np.array_equal(parts["max_x"], boxes["bbox-3"] + origin[1])
    if with_nuclei:
        inside = nuclei > 0
        assert np.array_equal(parts["nuc_count"], ndimage.sum_labels(inside, labels, ids))
        np.testing.assert_allclose(
            parts["nuc_sum"][:, 0], ndimage.sum_labels(np.where(inside, image[0], 0).astype(float), labels, ids),
            rtol=1e-12,
        )
        overlap = {(a, b): n for a, b, n in parts["pairs"]}
        assert overlap == {(a, a): int((inside & (labels == a)).sum()) for a in ids if (inside & (labels == a)).any()}


def test_perimeter_of_a_core_box_equals_skimage_on_the_whole() -> None:
    labels = _labels(seed=3)
    expected = regionprops_table(labels, properties=("label", "perimeter"))
    total = np.zeros(labels.max() + 1)
    # Four cores that tile the array, each seen with its 2 px halo.
    for core in (Box(0, 20, 0, 30), Box(0, 20, 30, 53), Box(20, 45, 0, 30), Box(20, 45, 30, 53)):
        window = core.grow(2, labels.shape)
        ids, perimeter = perimeter_partials(labels[window.slices], core.relative_to(window))
        total[ids] += perimeter
    np.testing.assert_allclose(total[expected["label"]], expected["perimeter"], rtol=1e-12)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_touching_pairs_equal_shifted_comparisons(connectivity) -> None:
    labels = _labels(seed=4)
    shifts = [(labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])]
    if connectivity == 2:
        shifts += [(labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])]
    expected = set()
    for first, second in shifts:
        contact = (first != second) & (first > 0) & (second > 0)
        expected |= {(min(a, b), max(a, b)) for a, b in zip(first[contact], second[contact])}
    got = touching_pairs(labels, connectivity)
    assert [tuple(row) for row in got] == sorted(expected)
    assert len(expected) > 5


def test_warm_block_task_compiles_the_kernels_for_the_slides_dtypes() -> None:
    """What a run calls on each worker while it stitches: the kernels of these dtypes loaded."""
    from tiled_seg.measure import _kernels, warm_block_task

    warm_block_task("int16", "uint64")
    def compiled_for(kernel, dtype: str) -> bool:
        return any(f"Array({dtype}," in str(signature) for signature in kernel.signatures)

    assert compiled_for(_kernels.cell_sums, "int16")
    assert compiled_for(_kernels.label_range, "uint64") and compiled_for(_kernels.perimeter_weights, "uint64")
