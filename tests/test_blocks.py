"""Block-task helpers: the merge by the caller, arguments every block task shares, region reads."""

from __future__ import annotations

import time

import dask
import numpy as np
import pytest
import zarr

from tiled_seg.blocks import gather_reduce, shared
from tiled_seg.io.regions import read_region


def _slow_value(value: int, delay_s: float) -> int:
    time.sleep(delay_s)
    return value


def _leaves(n: int) -> list:
    # The first leaves finish last.
    task = dask.delayed(_slow_value, pure=True)
    return [task(value, 0.05 * (n - value)) for value in range(n)]


def test_gather_reduce_merges_in_leaf_order_on_a_cluster(client) -> None:
    reports = []
    leaves = _leaves(6)
    with client.as_current():
        merged = gather_reduce(leaves, list, "blocks", lambda *report: reports.append(report))
    assert merged == list(range(6))
    assert reports == [("blocks", done, 6) for done in range(7)]
    keys = {leaf.key for leaf in leaves}

    def held() -> set:
        return keys & set(client.who_has())

    deadline = time.monotonic() + 10
    while held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not held(), "block results stayed on the workers after the merge"


def test_gather_reduce_without_a_cluster_gives_the_same_merge() -> None:
    assert gather_reduce(_leaves(4), list, "blocks") == [0, 1, 2, 3]


def test_shared_value_is_held_by_every_worker(client) -> None:
    """A per-block argument on one worker would draw every block task there."""
    with client.as_current():
        key = shared({"reader": "job"})
    assert set(client.who_has(key)[key.key]) == set(client.scheduler_info()["workers"])
    assert key.result() == {"reader": "job"}


def test_shared_value_without_a_cluster_is_one_graph_key() -> None:
    task = dask.delayed(len, pure=True)
    key = shared([1, 2, 3])
    assert dask.compute(task(key), task(key)) == (3, 3)


@pytest.mark.parametrize("channels", [[0, 1, 2, 3], [2], [3, 0, 1], [0, 2, 3, 1], [1, 1]])
@pytest.mark.parametrize("axes", ["cyx", "tczyx"])
def test_region_read_of_any_channel_list_equals_numpy(tmp_path, channels, axes) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 2**16, (4, 50, 70), dtype=np.uint16)
    stored = image.reshape((1, 4, 1, 50, 70)) if axes == "tczyx" else image
    array = zarr.create_array(tmp_path / "image.zarr", shape=stored.shape, dtype=stored.dtype,
                              chunks=(1, 1, 1, 16, 16) if axes == "tczyx" else (1, 16, 16))
    array[...] = stored
    block = read_region(array, axes, slice(5, 41), slice(9, 70), channels)
    np.testing.assert_array_equal(block, image[channels, 5:41, 9:70])
    assert read_region(array, axes, slice(5, 41), slice(9, 70)).shape == (4, 36, 61)
