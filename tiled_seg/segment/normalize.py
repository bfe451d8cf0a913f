"""Slide-wide intensity statistics and normalisation.

Every tile is normalised with the same numbers, computed once over the whole
slide: per-tile normalisation gives each tile its own contrast and therefore
seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import dask
import dask.array as da
import numpy as np
from skimage.filters import threshold_otsu

from tiled_seg.blocks import Progress, compute_blocks, shared, tree_reduce
from tiled_seg.io.regions import RegionReader
from tiled_seg.tiling import Box, plan_blocks

__all__ = [
    "SlideStats",
    "choose_stats_level",
    "channel_percentiles",
    "compute_slide_stats",
    "normalize_channel",
    "build_inputs",
]

#: Bins of the histogram of a derived (0-1) input image, for Otsu thresholds.
DERIVED_BINS = 1024
#: Largest number of bins used for exact integer histograms.
MAX_EXACT_BINS = 1 << 17
FLOAT_BINS = 1 << 14


@dataclass(frozen=True)
class SlideStats:
    """Slide-wide numbers applied identically to every tile.

    Attributes
    ----------
    low, high : dict of str to float
        Per-channel intensities mapped to 0 and 1 (raw units).
    nuclear_threshold, membrane_threshold : float
        Otsu thresholds of the normalised nuclear and membrane inputs (0-1).
    level : int
        Pyramid level the statistics were computed on.
    """

    low: dict[str, float]
    high: dict[str, float]
    nuclear_threshold: float
    membrane_threshold: float
    level: int

    def to_dict(self) -> dict[str, object]:
        return {
            "low": self.low,
            "high": self.high,
            "nuclear_threshold": self.nuclear_threshold,
            "membrane_threshold": self.membrane_threshold,
            "level": self.level,
        }


def choose_stats_level(level_shapes: Sequence[tuple[int, ...]], min_pixels: int) -> int:
    """Coarsest pyramid level with at least ``min_pixels`` pixels (else 0).

    >>> choose_stats_level([(3, 4000, 4000), (3, 2000, 2000), (3, 1000, 1000)], 2_000_000)
    1
    """
    chosen = 0
    for index, shape in enumerate(level_shapes):
        if shape[-1] * shape[-2] >= min_pixels:
            chosen = index
    return chosen


def _percentiles_from_histogram(
    counts: np.ndarray, low: float, width: float, percentiles: Sequence[float]
) -> list[float]:
    """Lower bin edges at which the cumulative counts reach each percentile."""
    cumulative = np.cumsum(counts, dtype=np.float64)
    total = cumulative[-1] if cumulative.size else 0.0
    if total == 0:
        return [low] * len(percentiles)
    values = []
    for percentile in percentiles:
        index = int(np.searchsorted(cumulative, total * percentile / 100.0, side="left"))
        values.append(low + width * min(index, counts.size - 1))
    return values


def _block_min_max(block: np.ndarray) -> np.ndarray:
    """Per-channel (min, max) of the finite pixels of a ``(C, Y, X)`` block."""
    flat = block.reshape(block.shape[0], -1).astype(np.float64)
    finite = np.isfinite(flat)
    low = np.where(finite, flat, np.inf).min(axis=1, initial=np.inf)
    high = np.where(finite, flat, -np.inf).max(axis=1, initial=-np.inf)
    return np.stack([low, high], axis=1)


def _block_histograms(
    block: np.ndarray, low: np.ndarray, width: np.ndarray, n_bins: int
) -> np.ndarray:
    """``(C, n_bins)`` counts of a ``(C, Y, X)`` block; non-finite pixels skipped."""
    counts = np.zeros((block.shape[0], n_bins), dtype=np.int64)
    for channel in range(block.shape[0]):
        values = block[channel].ravel().astype(np.float64)
        values = values[np.isfinite(values)]
        index = np.floor((values - low[channel]) / width[channel]).astype(np.int64)
        counts[channel] = np.bincount(np.clip(index, 0, n_bins - 1), minlength=n_bins)
    return counts


def _as_reader(image: RegionReader | np.ndarray | da.Array) -> RegionReader:
    return image if isinstance(image, RegionReader) else RegionReader(image, ("c", "y", "x"), image=True)


def _on_block(reader: RegionReader, box: Box, kernel: Callable[..., Any], *args: Any) -> Any:
    """Read one block of ``reader`` and apply ``kernel`` to it (one block task)."""
    return kernel(reader.read(box), *args)


def _sum(parts: list[np.ndarray]) -> np.ndarray:
    return np.sum(parts, axis=0)


def _over_blocks(
    reader: RegionReader, combine: Callable[[list[Any]], Any], kernel: Callable[..., Any], *args: Any,
    stage: str = "statistics", progress: Progress | None = None,
) -> Any:
    """``kernel`` on every block of ``reader`` (direct reads), merged with ``combine``."""
    task = dask.delayed(_on_block, pure=True)
    blocks = plan_blocks(reader.shape_yx, reader.chunk_yx)
    reader_key = shared(reader)
    leaves = [task(reader_key, box, kernel, *args) for box in blocks]
    return compute_blocks(leaves, tree_reduce(leaves, combine), stage, progress)


def _histograms(
    image: RegionReader, low: np.ndarray, width: np.ndarray, n_bins: int,
    kernel: Callable[..., np.ndarray] | None = None, stage: str = "statistics",
    progress: Progress | None = None,
) -> np.ndarray:
    if kernel is None:
        return np.asarray(_over_blocks(
            image, _sum, _block_histograms, low, width, n_bins, stage=stage, progress=progress
        ))

    def derived_histograms(block: np.ndarray) -> np.ndarray:
        return _block_histograms(kernel(block), low, width, n_bins)

    return np.asarray(_over_blocks(image, _sum, derived_histograms, stage=stage, progress=progress))


def channel_percentiles(
    image: RegionReader | np.ndarray | da.Array, percentiles: Sequence[float],
    progress: Progress | None = None,
) -> list[list[float]]:
    """Percentiles of every channel of a ``(C, Y, X)`` image, in passes of block tasks.

    8- and 16-bit integers are counted value by value in one pass. Other
    integer data whose range spans at most ``MAX_EXACT_BINS`` values gets one
    bin per value after a pass for the range; so integer percentiles are
    exact (the ``inverted_cdf`` definition). Other data gets ``FLOAT_BINS``
    bins between its minimum and maximum. Non-finite pixels are ignored.
    Each block task reads all its channels with one read.
    """
    reader = _as_reader(image)
    dtype = np.dtype(reader.array.dtype)
    if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        return _small_integer_percentiles(reader, dtype, percentiles, progress)
    extremes = _over_blocks(
        reader, _stack_extremes, _block_min_max, stage="statistics: range", progress=progress
    )
    low = extremes[:, 0].copy()
    high = extremes[:, 1].copy()
    empty = ~np.isfinite(low)
    low[empty] = 0.0
    high[empty] = 0.0
    span = np.maximum(high - low, 0.0)
    exact = np.issubdtype(dtype, np.integer) and span.max(initial=0) + 1 <= MAX_EXACT_BINS
    if exact:
        width = np.ones_like(span)
        n_bins = int(span.max(initial=0)) + 1
    else:
        width = np.where(span > 0, span / FLOAT_BINS, 1.0)
        n_bins = FLOAT_BINS + 1
    counts = _histograms(reader, low, width, n_bins, stage="statistics: percentiles", progress=progress)
    return [
        _percentiles_from_histogram(counts[c], float(low[c]), float(width[c]), percentiles)
        for c in range(counts.shape[0])
    ]


def _block_value_counts(block: np.ndarray, offset: int, n_values: int) -> np.ndarray:
    """``(C, n_values)`` counts of every value of a small-integer ``(C, Y, X)`` block, from ``offset``."""
    return np.stack([
        np.bincount(channel.ravel().astype(np.intp) - offset, minlength=n_values) for channel in block
    ])


def _small_integer_percentiles(
    reader: RegionReader, dtype: np.dtype, percentiles: Sequence[float], progress: Progress | None,
) -> list[list[float]]:
    """:func:`channel_percentiles` of 8- and 16-bit integers: one pass counting every value.

    The counts of every possible value give the range and the exact
    percentiles at once, as the two passes would (one bin per value).
    """
    info = np.iinfo(dtype)
    n_values = int(info.max) - int(info.min) + 1
    counts = _over_blocks(reader, _sum, _block_value_counts, int(info.min), n_values,
                          stage="statistics: percentiles", progress=progress)
    bounds = []
    for channel in counts:
        present = np.flatnonzero(channel)
        if present.size == 0:
            bounds.append([0.0] * len(percentiles))
            continue
        first = int(present[0])
        bounds.append(_percentiles_from_histogram(channel[first:], float(info.min + first), 1.0, percentiles))
    return bounds


def _stack_extremes(parts: list[np.ndarray]) -> np.ndarray:
    """Per-channel (min, max) over several blocks' ``(C, 2)`` extremes."""
    stacked = np.stack(parts)
    return np.stack([stacked[:, :, 0].min(axis=0), stacked[:, :, 1].max(axis=0)], axis=1)


def normalize_channel(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low`` to 0 and ``high`` to 1, clipped, as float32; NaN and inf become 0.

    Non-finite pixels are invalid measurements, not bright ones, so they count
    as background (the slide-wide statistics ignore them too).

    >>> normalize_channel(np.array([0, 5, 10, 20]), 0.0, 10.0).tolist()
    [0.0, 0.5, 1.0, 1.0]
    """
    scale = high - low if high > low else 1.0
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.clip((values - np.float32(low)) / np.float32(scale), 0.0, 1.0)
    return np.where(np.isfinite(values), out, np.float32(0.0))


def build_inputs(
    block: np.ndarray,
    names: Sequence[str],
    nuclear: Sequence[str],
    membrane: Sequence[str],
    low: Mapping[str, float],
    high: Mapping[str, float],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Nuclear and membrane inputs of one ``(C, Y, X)`` block of panel channels.

    Each input is the mean of its normalised channels; membrane is None when
    the panel names no membrane channel.
    """

    def mean_of(channels: Sequence[str]) -> np.ndarray:
        total = np.zeros(block.shape[1:], dtype=np.float32)
        for name in channels:
            total += normalize_channel(block[names.index(name)], low[name], high[name])
        return total / np.float32(len(channels))

    return mean_of(nuclear), (mean_of(membrane) if membrane else None)


def _otsu(counts: np.ndarray) -> float:
    if np.count_nonzero(counts) < 2:
        return 0.5
    edges = np.linspace(0.0, 1.0, DERIVED_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return float(threshold_otsu(hist=(counts, centres)))


def compute_slide_stats(
    level: RegionReader | da.Array | np.ndarray,
    names: Sequence[str],
    nuclear: Sequence[str],
    membrane: Sequence[str],
    *,
    low_percentile: float = 1.0,
    high_percentile: float = 99.5,
    level_index: int = 0,
    fixed_range: Mapping[str, tuple[float, float]] | None = None,
    progress: Progress | None = None,
) -> SlideStats:
    """Slide-wide statistics of the panel channels on one pyramid level.

    Passes of block tasks over the panel channels (each block read
    directly, all its channels at once): percentiles (one pass for 8- and
    16-bit images, else extremes then histograms, :func:`channel_percentiles`),
    then histograms of the derived inputs (Otsu thresholds).

    Parameters
    ----------
    level : RegionReader, or dask or numpy array, shape (C, Y, X)
        One pyramid level of the slide (all its channels).
    names : sequence of str
        Channel names of ``level``.
    nuclear, membrane : sequence of str
        Panel channels.
    low_percentile, high_percentile : float
        Percentiles (0-100) mapped to 0 and 1.
    fixed_range : mapping of str to (float, float), optional
        Channels mapped with these raw ``(low, high)`` values instead of
        percentiles (e.g. ``(0, 1)`` keeps probability channels as they are).

    Returns
    -------
    SlideStats
    """
    used = list(dict.fromkeys([*nuclear, *membrane]))
    reader = _as_reader(level)
    panel = RegionReader(reader.array, reader.axes, tuple(
        (reader.channels or range(len(names)))[list(names).index(n)] for n in used
    ))
    bounds = channel_percentiles(panel, (low_percentile, high_percentile), progress)
    low = {name: bounds[i][0] for i, name in enumerate(used)}
    high = {name: bounds[i][1] for i, name in enumerate(used)}
    for name, (fixed_low, fixed_high) in (fixed_range or {}).items():
        if name in low:
            low[name], high[name] = float(fixed_low), float(fixed_high)

    def derived(block: np.ndarray) -> np.ndarray:
        nuclear_image, membrane_image = build_inputs(block, used, nuclear, membrane, low, high)
        if membrane_image is None:
            membrane_image = np.zeros_like(nuclear_image)
        return np.stack([nuclear_image, membrane_image])

    counts = _histograms(
        panel, np.zeros(2), np.full(2, 1.0 / DERIVED_BINS), DERIVED_BINS, derived,
        stage="statistics: thresholds", progress=progress,
    )
    return SlideStats(
        low=low,
        high=high,
        nuclear_threshold=_otsu(counts[0]),
        membrane_threshold=_otsu(counts[1]) if membrane else 0.5,
        level=level_index,
    )
