"""Tests of the shared label kernels in ``tiled_seg.labels``."""

from __future__ import annotations

import numpy as np
import pytest

from tiled_seg.labels import distinct_counts, distinct_ids


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    dense = rng.integers(0, 300, 5000)
    return [
        dense.astype(np.uint32),
        dense.astype(np.int32),
        dense.astype(np.uint64),
        dense.astype(np.int64),
        dense.astype(np.uint16),
        np.array([7], dtype=np.uint32),
        np.zeros(10, dtype=np.uint32),
        np.array([], dtype=np.uint32),
        # Sparse ids (far beyond the value count), negative values and floats take np.unique.
        np.array([2**40, 0, 5, 2**40], dtype=np.int64),
        np.array([-3, 0, 2, 2], dtype=np.int32),
        np.array([0.5, 0.5, 2.0]),
    ]


@pytest.mark.parametrize("values", _cases(), ids=lambda v: f"{v.dtype}-{v.size}")
def test_distinct_counts_and_ids_equal_numpy_unique(values):
    ids, inverse, counts = distinct_counts(values)
    expected = np.unique(values, return_inverse=True, return_counts=True)
    expected_ids, expected_inverse, expected_counts = expected
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(inverse, expected_inverse)
    np.testing.assert_array_equal(counts, expected_counts)
    np.testing.assert_array_equal(distinct_ids(values), expected_ids)
    if values.size:
        np.testing.assert_array_equal(ids[inverse], values)


def test_counted_path_is_taken_for_dense_labels():
    # The counted path returns int64 ids whatever the input dtype; np.unique keeps uint16.
    ids, _, _ = distinct_counts(np.array([0, 3, 3, 1], dtype=np.uint16))
    assert ids.dtype == np.int64
    assert distinct_ids(np.array([0, 3, 3, 1], dtype=np.uint16)).dtype == np.int64
