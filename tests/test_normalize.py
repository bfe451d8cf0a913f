import dask.array as da
import numpy as np
import pytest

from tiled_seg.segment.normalize import (
    build_inputs,
    channel_percentiles,
    choose_stats_level,
    compute_slide_stats,
    normalize_channel,
)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int32])
def test_integer_percentiles_are_exact(dtype):
    values = np.random.default_rng(0).integers(0, 200, size=(97, 131)).astype(dtype)
    array = da.from_array(values, chunks=(20, 30))
    got = channel_percentiles(array[None], (1.0, 50.0, 99.5))[0]
    expected = np.percentile(values, (1.0, 50.0, 99.5), method="inverted_cdf")
    assert got == pytest.approx(expected.tolist())


@pytest.mark.parametrize(
    ("dtype", "low", "high"), [(np.int16, -300, 120), (np.uint16, 40_000, 65_536), (np.int8, -128, 128)]
)
def test_small_integer_percentiles_of_every_channel_are_exact(dtype, low, high):
    """8- and 16-bit images are counted value by value in one pass: negative and top values too."""
    rng = np.random.default_rng(3)
    values = np.stack([rng.integers(low, high, size=(64, 90)), rng.integers(low, low + 7, size=(64, 90))])
    values = values.astype(dtype)
    got = channel_percentiles(da.from_array(values, chunks=(1, 30, 40)), (0.0, 1.0, 50.0, 99.5, 100.0))
    for channel, percentiles in zip(values, got):
        expected = np.percentile(channel, (0.0, 1.0, 50.0, 99.5, 100.0), method="inverted_cdf")
        assert percentiles == expected.tolist()


def test_float_percentiles_are_close_and_ignore_nan():
    values = np.random.default_rng(1).normal(size=(120, 80)).astype(np.float32)
    values[3, 4] = np.nan
    values[5, 6] = np.inf
    got = channel_percentiles(da.from_array(values[None], chunks=32), (1.0, 99.0))[0]
    finite = values[np.isfinite(values)]
    step = float(finite.max() - finite.min()) / 2**14
    assert got == pytest.approx(np.percentile(finite, (1.0, 99.0), method="inverted_cdf").tolist(), abs=3 * step)


def test_constant_channel_does_not_divide_by_zero():
    array = da.zeros((1, 10, 10), dtype=np.uint16, chunks=5)
    low, high = channel_percentiles(array, (1, 99))[0]
    assert low == high == 0
    assert normalize_channel(np.zeros((2, 2)), low, high).max() == 0


def test_stats_are_identical_for_any_chunking():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 1000, size=(3, 64, 64)).astype(np.uint16)
    names = ["DNA1", "CD3", "NaKATPase"]
    stats = [
        compute_slide_stats(da.from_array(image, chunks=(1, c, c)), names, ["DNA1"], ["NaKATPase"])
        for c in (16, 64)
    ]
    assert stats[0] == stats[1]
    assert 0 < stats[0].nuclear_threshold < 1
    assert "CD3" not in stats[0].low


def test_build_inputs_means_normalised_channels():
    block = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 20.0), np.full((2, 2), 40.0)])
    names = ["a", "b", "c"]
    low = {"a": 0.0, "b": 0.0, "c": 0.0}
    high = {"a": 10.0, "b": 40.0, "c": 80.0}
    nuclear, membrane = build_inputs(block, names, ["a"], ["b", "c"], low, high)
    assert np.allclose(nuclear, 1.0)
    assert np.allclose(membrane, 0.5)
    assert build_inputs(block, names, ["a"], [], low, high)[1] is None


def test_choose_stats_level_falls_back_to_full_resolution():
    assert choose_stats_level([(1, 100, 100), (1, 50, 50)], 10**9) == 0
