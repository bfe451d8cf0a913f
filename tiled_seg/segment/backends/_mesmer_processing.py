"""Mesmer's pre- and post-processing, as DeepCell computes it.

Greenwald et al. (2022), "Whole-cell segmentation of tissue images with
human-level performance using large-scale data annotation and deep
learning", Nat. Biotechnol. 40:555-565; the reference is DeepCell's own code,
``deepcell.applications.Mesmer`` (deepcell 0.12) on ``deepcell-toolbox``
0.12.1, re-implemented here because ``deepcell`` needs Python < 3.11.
``tests/test_mesmer.py`` compares every step with ``deepcell-toolbox`` and
finds 0 differing pixels. The steps, in DeepCell's order:

1. :func:`resize_input`: the (nuclear, membrane) image to the model's
   0.5 um/px (bilinear, anti-aliased, size truncated to whole px);
2. :func:`preprocess`: per channel, clip at the 99.9th percentile of the
   non-zero pixels, rescale to 0-1 and equalise with CLAHE (kernel 128 px);
3. the network in blended windows
   (:func:`tiled_seg.segment.backends._blended_windows.predict_blended`);
4. :func:`deep_watershed` per compartment, with DeepCell's settings
   (:data:`WHOLE_CELL`, :data:`NUCLEAR`): markers are h-maxima of the inner
   distance, a watershed of the smoothed interior inside its threshold,
   small objects removed, small holes filled (:func:`fill_holes`);
5. :func:`resize_output`: the labels back to the input's shape.

Plain numpy kernels on ``(Y, X[, C])`` arrays; no TensorFlow here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from tiled_seg.errors import BackendError
from tiled_seg.labels import relabel_consecutive, remove_small_labels

__all__ = [
    "WatershedSettings",
    "WHOLE_CELL",
    "NUCLEAR",
    "COMPARTMENT_HEADS",
    "resize_input",
    "percentile_clip",
    "preprocess",
    "deep_watershed",
    "fill_holes",
    "resize_output",
    "split_outputs",
]

#: Output heads in the order of DeepCell's MultiplexSegmentation model:
#: whole-cell inner distance, whole-cell pixelwise (3 classes), nuclear inner
#: distance, nuclear pixelwise; the pixelwise interior is class 1.
COMPARTMENT_HEADS = {"whole-cell": (0, 1), "nuclear": (2, 3)}
_INTERIOR_CLASS = 1


@dataclass(frozen=True)
class WatershedSettings:
    """Settings of :func:`deep_watershed` (px at the model's pixel size).

    Attributes
    ----------
    maxima_threshold : float
        h of the h-maxima of the inner distance that seed objects.
    interior_threshold : float
        Pixels whose smoothed interior probability exceeds this may join an object.
    maxima_smooth_px, interior_smooth_px : float
        Gaussian sigma (px) applied to each map first (0 = none).
    radius_px : int
        Radius (px) of the disk footprint of the h-maxima.
    min_object_px : int
        Objects with fewer pixels are removed.
    max_hole_px : int
        Holes with fewer pixels are filled (see :func:`fill_holes`).
    """

    maxima_threshold: float = 0.1
    interior_threshold: float = 0.2
    maxima_smooth_px: float = 0.0
    interior_smooth_px: float = 2.0
    radius_px: int = 2
    min_object_px: int = 15
    max_hole_px: int = 15


#: ``Mesmer.predict``'s whole-cell defaults (deepcell 0.12).
WHOLE_CELL = WatershedSettings(maxima_threshold=0.075, interior_threshold=0.2)
#: ``Mesmer.predict``'s nuclear defaults (deepcell 0.12).
NUCLEAR = WatershedSettings(maxima_threshold=0.1, interior_threshold=0.2)


def resize_input(image: np.ndarray, pixel_size_um: float, model_mpp: float = 0.5) -> np.ndarray:
    """Resize a ``(Y, X, C)`` image from ``pixel_size_um`` to the model's ``model_mpp``.

    The new shape is ``int(Y * f), int(X * f)`` with ``f = pixel_size_um /
    model_mpp``; bilinear, anti-aliased, zero outside, in the input's dtype.
    An image already at ``model_mpp`` is returned unchanged.
    """
    if pixel_size_um == model_mpp:
        return image
    from skimage.transform import resize

    factor = pixel_size_um / model_mpp
    shape = (int(image.shape[0] * factor), int(image.shape[1] * factor), image.shape[2])
    resized = resize(image, shape, mode="constant", preserve_range=True, order=1, anti_aliasing=True)
    return resized.astype(image.dtype)


def percentile_clip(image: np.ndarray, percentile: float = 99.9) -> np.ndarray:
    """Clip each channel of ``(Y, X, C)`` at a percentile of its non-zero pixels.

    >>> percentile_clip(np.array([[[0.0], [1.0], [9.0]]]), 50).ravel().tolist()
    [0.0, 1.0, 5.0]
    """
    out = np.zeros_like(image)
    for c in range(image.shape[-1]):
        channel = image[..., c].copy()
        nonzero = channel[np.nonzero(channel)]
        if nonzero.size:
            limit = np.percentile(nonzero, percentile)
            channel[channel > limit] = limit
            out[..., c] = channel
    return out


def preprocess(
    image: np.ndarray,
    percentile: float | None = 99.9,
    clahe: bool = True,
    kernel_size_px: int = 128,
) -> np.ndarray:
    """Mesmer's input normalisation of one ``(Y, X, C)`` image, per channel.

    Parameters
    ----------
    image : ndarray, shape (Y, X, C)
        Image at the model's pixel size (0.5 um/px).
    percentile : float or None
        Clip each channel with :func:`percentile_clip`; None skips the clip.
    clahe : bool
        Rescale each channel to 0-1 by its minimum and maximum and apply
        CLAHE (:func:`skimage.exposure.equalize_adapthist`).
    kernel_size_px : int
        CLAHE contextual-region size (px at the model's pixel size).

    Returns
    -------
    ndarray, shape (Y, X, C), float32
        With ``clahe``, a constant channel becomes all zeros.
    """
    from skimage.exposure import equalize_adapthist, rescale_intensity

    out = image if percentile is None else percentile_clip(image, percentile)
    out = out.astype(np.float32)
    if not clahe:
        return out
    for c in range(out.shape[-1]):
        channel = out[..., c]
        if (channel == channel.flat[0]).all():
            channel[...] = 0.0
            continue
        scaled = rescale_intensity(channel, out_range=(0.0, 1.0))
        channel[...] = equalize_adapthist(scaled, kernel_size=kernel_size_px)
    return out


def fill_holes(labels: np.ndarray, max_hole_px: int) -> np.ndarray:
    """DeepCell's hole filling: small pieces of "not this object" in its box become it.

    For each object (in id order) that is not simply connected (Euler
    number < 1, 8-connected object), every 4-connected component of "not
    this object" inside the object's bounding box that has fewer than
    ``max_hole_px`` pixels is given its id. Such a piece may touch the box
    edge or hold other objects' pixels (not only background), and objects
    filled earlier are seen by later ones.

    >>> ring = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 2]])
    >>> fill_holes(ring, 2).tolist()
    [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 2]]
    """
    from skimage.measure import euler_number

    out = labels.copy()
    four = ndi.generate_binary_structure(2, 1)
    for index, box in enumerate(ndi.find_objects(labels.astype(np.intp, copy=False))):
        if box is None:
            continue
        label = index + 1
        if euler_number(labels[box] == label, connectivity=2) >= 1:
            continue
        patch = out[box]
        pieces, n = ndi.label(patch != label, structure=four)
        small = np.bincount(pieces.ravel(), minlength=n + 1) < max_hole_px
        small[0] = False
        out[box] = np.where(small[pieces], label, patch)
    return out


def deep_watershed(
    inner_distance: np.ndarray,
    interior: np.ndarray,
    settings: WatershedSettings = WHOLE_CELL,
) -> np.ndarray:
    """Instances from an inner-distance map and an interior probability.

    Parameters
    ----------
    inner_distance : ndarray, shape (Y, X), float
        Predicted inner distance (high at object centres).
    interior : ndarray, shape (Y, X), float
        Predicted probability of the interior class (0-1). Both maps are
        used in their own dtype (the network's float32), as DeepCell does.
    settings : WatershedSettings
        :data:`WHOLE_CELL` or :data:`NUCLEAR`, or your own.

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Objects 1..N in the order of their seeds, 0 for background.
    """
    from skimage.measure import label
    from skimage.morphology import disk, h_maxima
    from skimage.segmentation import watershed

    maxima = ndi.gaussian_filter(np.asarray(inner_distance), settings.maxima_smooth_px)
    interior = ndi.gaussian_filter(np.asarray(interior), settings.interior_smooth_px)
    markers = label(h_maxima(maxima, settings.maxima_threshold, footprint=disk(settings.radius_px)))
    labels = watershed(-interior, markers, mask=interior > settings.interior_threshold)
    if settings.min_object_px:
        labels = remove_small_labels(labels, settings.min_object_px)
    if settings.max_hole_px > 0:
        labels = fill_holes(labels, settings.max_hole_px)
    return relabel_consecutive(labels)


def _nearest_rows(source: int, target: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST source index per target index: floor(i * source / target)."""
    step = 1.0 / (target / source)
    return np.minimum(np.floor(np.arange(target) * step).astype(np.intp), source - 1)


def resize_output(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a ``(Y, X, C)`` label stack to ``shape`` by nearest neighbour, as DeepCell does.

    One channel is sampled as OpenCV's ``INTER_NEAREST`` samples (source
    pixel ``floor(i * Y / shape[0])``), several as
    :func:`skimage.transform.resize` with ``order=0`` (pixel centres):
    DeepCell resizes a single-compartment result with OpenCV and a
    two-compartment one with scikit-image, so the sampling differs.

    >>> resize_output(np.array([[[1], [2]]]), (1, 4))[..., 0].tolist()
    [[1, 1, 2, 2]]
    """
    if labels.shape[:2] == tuple(shape):
        return labels
    if labels.shape[-1] == 1:
        rows = _nearest_rows(labels.shape[0], shape[0])
        cols = _nearest_rows(labels.shape[1], shape[1])
        return labels[rows[:, None], cols[None, :]]
    from skimage.transform import resize

    resized = resize(
        labels, tuple(shape) + labels.shape[2:], mode="constant", preserve_range=True,
        order=0, anti_aliasing=False,
    )
    return resized.astype(labels.dtype)


def _head_index(name: str) -> int | None:
    match = re.search(r"semantic_(\d+)", name)
    return int(match.group(1)) if match else None


def split_outputs(
    outputs: Sequence[np.ndarray] | Mapping[str, np.ndarray], names: Sequence[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Map Mesmer's four output heads to ``{compartment: (inner_distance, interior)}``.

    Parameters
    ----------
    outputs : sequence or mapping of ndarray, each shape (..., Y, X, K)
        The network's outputs, in model order or keyed by head name.
    names : sequence of str, optional
        Head names in the order of ``outputs`` (a sequence); names of the
        form ``semantic_<k>`` put the heads in DeepCell's order.

    Returns
    -------
    dict
        ``"whole-cell"`` and ``"nuclear"`` to ``(inner_distance, interior)``,
        each ``(..., Y, X)``.
    """
    if isinstance(outputs, Mapping):
        names, outputs = list(outputs), list(outputs.values())
    outputs = list(outputs)
    if len(outputs) != 4:
        raise BackendError(
            f"a Mesmer model has 4 output heads, this one has {len(outputs)}; "
            "point `model_path` at DeepCell's MultiplexSegmentation model."
        )
    if names is not None:
        found = [_head_index(str(n)) for n in names]
        indices = [i for i in found if i is not None]
        if len(indices) == len(found) and len(set(indices)) == len(indices):
            outputs = [o for _, o in sorted(zip(indices, outputs), key=lambda pair: pair[0])]
    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for compartment, (distance_head, pixel_head) in COMPARTMENT_HEADS.items():
        pixelwise = outputs[pixel_head]
        interior = pixelwise[..., _INTERIOR_CLASS] if pixelwise.shape[-1] > 1 else pixelwise[..., 0]
        result[compartment] = (outputs[distance_head][..., 0], interior)
    return result
