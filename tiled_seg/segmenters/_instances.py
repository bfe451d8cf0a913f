"""Shared post-processing of model backends: windows, rescaling, instances, linkage.

Model backends (``onnx``, ``mesmer``, ``cellpose``) turn dense network outputs
into label images the same way wherever they can, so the helpers live here:

* :func:`predict_in_windows` runs a network over a tile in fixed-size
  overlapping windows and keeps, for every pixel, the prediction of the window
  whose centre is nearest (crop-margin tiling: no blending, deterministic);
* :func:`rescale_image` / :func:`resize_image` move between the slide's pixel
  size and a model's;
* :func:`probability_instances` turns a foreground probability into instances
  with the watershed backend's own nuclear kernel
  (:func:`tiled_seg.segmenters.watershed.segment_nuclei`), so there is one
  distance-transform marker watershed in the package, not two;
* :func:`remove_small_labels`, :func:`relabel_consecutive`
  and :func:`link_nuclei` (nucleus-to-cell linkage by maximum overlap).

All functions are plain numpy kernels; none imports dask or a model library.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tiled_seg.segmenters.base import SlideContext
from tiled_seg.segmenters.watershed import WatershedOptions, _remove_small, segment_nuclei

__all__ = [
    "window_starts",
    "predict_in_windows",
    "rescale_image",
    "resize_image",
    "probability_instances",
    "remove_small_labels",
    "relabel_consecutive",
    "link_nuclei",
]

#: A network on a batch of windows: ``(N, W, W, C)`` in, one or more ``(N, W, W, K)`` out.
Predictor = Callable[[np.ndarray], Sequence[np.ndarray]]


def window_starts(length_px: int, window_px: int, margin_px: int) -> list[int]:
    """Start offsets (px) of windows covering ``length_px`` with ``2 * margin_px`` overlap.

    The last window is aligned to the end, so all windows lie inside the
    array when ``length_px >= window_px``; a shorter axis gets one window
    (the caller pads).

    >>> window_starts(10, 4, 1)
    [0, 2, 4, 6]
    >>> window_starts(3, 4, 1)
    [0]
    """
    stride = max(window_px - 2 * margin_px, 1)
    if length_px <= window_px:
        return [0]
    starts = list(range(0, length_px - window_px, stride))
    starts.append(length_px - window_px)
    return starts


def _kept_ranges(starts: list[int], window_px: int, length_px: int) -> list[tuple[int, int]]:
    """Per window, the output range it owns: cut at the middle of each overlap."""
    cuts = [0]
    for previous, start in zip(starts[:-1], starts[1:]):
        cuts.append((start + previous + window_px) // 2)
    cuts.append(length_px)
    return list(zip(cuts[:-1], cuts[1:]))


def predict_in_windows(
    image: np.ndarray,
    predict: Predictor,
    window_px: int,
    margin_px: int,
    batch_size: int = 1,
) -> list[np.ndarray]:
    """Run ``predict`` over ``image`` in overlapping ``window_px`` windows.

    Parameters
    ----------
    image : ndarray, shape (Y, X, C), float32
        Model input (already preprocessed).
    predict : callable
        Maps a batch ``(N, window_px, window_px, C)`` to a sequence of outputs,
        each ``(N, window_px, window_px, K_i)``.
    window_px : int
        Side of the model's input window (px).
    margin_px : int
        Pixels at each inner window edge that are overwritten by the
        neighbouring window (the model's halo); windows overlap by
        ``2 * margin_px``.
    batch_size : int
        Windows per call of ``predict``.

    Returns
    -------
    list of ndarray, each shape (Y, X, K_i), float32
        Every pixel comes from the window whose centre is nearest along each
        axis. Axes shorter than ``window_px`` are zero-padded at the end.
    """
    height, width = image.shape[:2]
    pad_y, pad_x = max(window_px - height, 0), max(window_px - width, 0)
    if pad_y or pad_x:
        image = np.pad(image, ((0, pad_y), (0, pad_x), (0, 0)))
    full_h, full_w = image.shape[:2]
    ys, xs = window_starts(full_h, window_px, margin_px), window_starts(full_w, window_px, margin_px)
    ranges_y = _kept_ranges(ys, window_px, full_h)
    ranges_x = _kept_ranges(xs, window_px, full_w)
    boxes = [(y, x, ry, rx) for y, ry in zip(ys, ranges_y) for x, rx in zip(xs, ranges_x)]
    outputs: list[np.ndarray] = []
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first : first + batch_size]
        batch = np.stack([image[y : y + window_px, x : x + window_px] for y, x, _, _ in chunk])
        results = [np.asarray(r, dtype=np.float32) for r in predict(batch)]
        if not outputs:
            outputs = [np.zeros((full_h, full_w, r.shape[-1]), np.float32) for r in results]
        for index, (y, x, (y0, y1), (x0, x1)) in enumerate(chunk):
            for out, result in zip(outputs, results):
                out[y0:y1, x0:x1] = result[index, y0 - y : y1 - y, x0 - x : x1 - x]
    return [out[:height, :width] for out in outputs]


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize ``(Y, X[, C])`` by ``factor`` to ``round(Y * factor), round(X * factor)``.

    A factor of 1 returns the input unchanged; see :func:`resize_image`.
    """
    if factor == 1.0:
        return image
    shape = (max(round(image.shape[0] * factor), 1), max(round(image.shape[1] * factor), 1))
    return resize_image(image, shape)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize ``(Y, X[, C])`` to ``shape`` (bilinear, anti-aliased when shrinking), float32."""
    if image.shape[:2] == tuple(shape):
        return image
    from skimage.transform import resize

    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return resize(
        image,
        tuple(shape) + image.shape[2:],
        order=1,
        mode="edge",
        anti_aliasing=shrink,
        preserve_range=True,
    ).astype(np.float32)


def probability_instances(
    probability: np.ndarray,
    context: SlideContext,
    threshold: float = 0.5,
    nucleus_diameter_um: float = 7.0,
    min_area_um2: float = 8.0,
    smoothing_um: float = 0.0,
    peak_separation: float = 0.5,
) -> np.ndarray:
    """Instances from a foreground probability by a distance-transform marker watershed.

    Parameters
    ----------
    probability : ndarray, shape (Y, X), float
        Foreground probability (0-1).
    context : SlideContext
        Pixel size (um/px).
    threshold : float
        Probability above which a pixel is foreground.
    nucleus_diameter_um : float
        Typical object diameter (um); sets the peak search disk.
    min_area_um2 : float
        Objects smaller than this (um^2) are removed.
    smoothing_um : float
        Gaussian sigma (um) applied to the probability first.
    peak_separation : float
        Minimum peak distance as a fraction of ``nucleus_diameter_um``.

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Objects labelled 1..N, 0 for background.

    Notes
    -----
    This is :func:`tiled_seg.segmenters.watershed.segment_nuclei` applied to
    the probability with a fixed threshold, so the probability map is split
    exactly as the watershed backend splits a nuclear image.
    """
    options = WatershedOptions(
        nucleus_diameter_um=nucleus_diameter_um,
        max_cell_diameter_um=max(nucleus_diameter_um, 25.0),
        smoothing_um=smoothing_um,
        nuclear_threshold=threshold,
        peak_separation=peak_separation,
        min_nucleus_area_um2=min_area_um2,
    )
    labels = segment_nuclei(probability.astype(np.float32, copy=False), options, context)
    return relabel_consecutive(labels)


def remove_small_labels(labels: np.ndarray, min_area_px: float) -> np.ndarray:
    """Set objects with fewer than ``min_area_px`` pixels to background.

    >>> remove_small_labels(np.array([[1, 1, 0, 2]]), 2).tolist()
    [[1, 1, 0, 0]]
    """
    return _remove_small(labels, min_area_px)


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..N in order of first id, as int32 (0 stays 0).

    >>> relabel_consecutive(np.array([[0, 7, 7, 3]])).tolist()
    [[0, 2, 2, 1]]
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lookup[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lookup[labels]


def link_nuclei(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Give every nucleus the id of the cell it overlaps most, clipped to that cell.

    Parameters
    ----------
    cells : ndarray of int, shape (Y, X)
        Whole-cell labels.
    nuclei : ndarray of int, shape (Y, X)
        Nuclear labels segmented independently of ``cells``.

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Nuclei relabelled so that nucleus ``k`` lies inside cell ``k``. A
        nucleus overlapping no cell is dropped; nucleus pixels outside their
        cell are dropped; several nuclei choosing one cell share its id (that
        cell's nuclear compartment). Ties go to the smallest cell id.

    Examples
    --------
    >>> cells = np.array([[1, 1, 2, 2, 0]])
    >>> nuclei = np.array([[0, 5, 5, 5, 5]])
    >>> link_nuclei(cells, nuclei).tolist()
    [[0, 0, 2, 2, 0]]
    """
    n_nuclei = int(nuclei.max(initial=0))
    if n_nuclei == 0:
        return np.zeros(nuclei.shape, np.int32)
    inside = (nuclei > 0) & (cells > 0)
    pairs_n, pairs_c = nuclei[inside].astype(np.int64), cells[inside].astype(np.int64)
    best = np.zeros(n_nuclei + 1, np.int64)
    if pairs_n.size:
        keys, counts = np.unique(pairs_n * (int(cells.max()) + 1) + pairs_c, return_counts=True)
        nucleus, cell = keys // (int(cells.max()) + 1), keys % (int(cells.max()) + 1)
        # Sort by nucleus, then count descending, then cell id ascending; take the first.
        order = np.lexsort((cell, -counts, nucleus))
        first = np.ones(order.size, bool)
        first[1:] = nucleus[order][1:] != nucleus[order][:-1]
        best[nucleus[order][first]] = cell[order][first]
    linked = best[nuclei]
    return np.where(linked == cells, linked, 0).astype(np.int32)
