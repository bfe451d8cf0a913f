"""Shared post-processing of model backends: windows, rescaling, instances, linkage.

Model backends (``onnx``, ``mesmer``, ``cellpose``) turn dense network outputs
into label images the same way wherever they can, so the helpers live here:

* windows for a network are :mod:`tiled_seg.segment.backends._windows`;
* :func:`rescale_image` / :func:`resize_image` move between the slide's pixel
  size and a model's;
* :func:`probability_instances` turns a foreground probability into instances
  with the watershed backend's own nuclear kernel
  (:func:`tiled_seg.segment.backends.watershed.segment_nuclei`), so there is one
  distance-transform marker watershed in the package, not two;
* :func:`link_nuclei` (nucleus-to-cell linkage by maximum overlap);
  renumbering and removing small objects are :mod:`tiled_seg.labels`.

All functions are plain numpy kernels; none imports dask or a model library.
"""

from __future__ import annotations

import numpy as np

from tiled_seg.labels import first_of_groups, relabel_consecutive
from tiled_seg.segment.backends.base import SlideContext
from tiled_seg.segment.backends.watershed import WatershedOptions, segment_nuclei

__all__ = [
    "rescale_image",
    "resize_image",
    "probability_instances",
    "link_nuclei",
]

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
    This is :func:`tiled_seg.segment.backends.watershed.segment_nuclei` applied to
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
        top = first_of_groups(nucleus, -counts, cell)
        best[nucleus[top]] = cell[top]
    linked = best[nuclei]
    return np.where(linked == cells, linked, 0).astype(np.int32)
