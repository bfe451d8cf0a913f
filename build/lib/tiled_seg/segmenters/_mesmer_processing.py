"""Mesmer's pre- and post-processing, written from the paper's Methods.

Greenwald et al. (2022), "Whole-cell segmentation of tissue images with
human-level performance using large-scale data annotation and deep
learning", Nat. Biotechnol. 40:555-565. Inputs are two channels (nuclear,
membrane) at 0.5 um/px; each channel is clipped at its 99.9th percentile and
contrast-equalised with CLAHE. The network predicts, for whole cells and for
nuclei, an inner-distance map and a pixelwise interior/boundary/background
map; instances are a marker watershed seeded by inner-distance peaks within
the interior mask, followed by small-object removal and hole filling.

Plain numpy kernels on ``(Y, X[, C])`` arrays; no TensorFlow here.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from tiled_seg.errors import BackendError
from tiled_seg.segmenters._instances import (
    fill_label_holes,
    relabel_consecutive,
    remove_small_labels,
)

__all__ = ["preprocess", "deep_watershed", "split_outputs", "COMPARTMENT_HEADS"]

#: Output heads in the order of DeepCell's MultiplexSegmentation model:
#: whole-cell inner distance, whole-cell pixelwise (3 classes), nuclear inner
#: distance, nuclear pixelwise; the pixelwise interior is class 1.
COMPARTMENT_HEADS = {"whole-cell": (0, 1), "nuclear": (2, 3)}
_INTERIOR_CLASS = 1


def preprocess(
    image: np.ndarray,
    percentile: float | None = 99.9,
    clahe: bool = True,
    kernel_size_px: int = 128,
) -> np.ndarray:
    """Mesmer's input normalisation of one ``(Y, X, C)`` image, per channel.

    Parameters
    ----------
    image : ndarray, shape (Y, X, C), float
        Image at the model's pixel size (0.5 um/px).
    percentile : float or None
        Clip each channel at this percentile of its own values; None skips
        the clip (the input is already clipped with slide-wide numbers).
    clahe : bool
        Rescale each channel to 0-1 by its minimum and maximum and apply
        CLAHE (:func:`skimage.exposure.equalize_adapthist`).
    kernel_size_px : int
        CLAHE contextual-region size (px at the model's pixel size).

    Returns
    -------
    ndarray, shape (Y, X, C), float32
        A constant channel becomes all zeros.
    """
    from skimage.exposure import equalize_adapthist

    out = np.array(image, dtype=np.float32)
    for c in range(out.shape[-1]):
        channel = out[..., c]
        if percentile is not None:
            np.minimum(channel, np.percentile(channel, percentile), out=channel)
        if not clahe:
            continue
        low, high = float(channel.min()), float(channel.max())
        if high <= low:
            channel[...] = 0.0
            continue
        scaled = (channel - low) / (high - low)
        channel[...] = equalize_adapthist(scaled, kernel_size=kernel_size_px)
    return out


def deep_watershed(
    inner_distance: np.ndarray,
    interior: np.ndarray,
    maxima_threshold: float = 0.1,
    interior_threshold: float = 0.3,
    maxima_smooth_px: float = 0.0,
    interior_smooth_px: float = 2.0,
    radius_px: int = 2,
    min_object_px: float = 15,
    max_hole_px: float = 15,
) -> np.ndarray:
    """Instances from an inner-distance map and an interior probability.

    Parameters
    ----------
    inner_distance : ndarray, shape (Y, X), float
        Predicted inner distance (high at object centres).
    interior : ndarray, shape (Y, X), float
        Predicted probability of the interior class (0-1).
    maxima_threshold : float
        A peak must rise at least this much above its surroundings
        (h-maxima of the inner distance).
    interior_threshold : float
        Pixels with interior probability above this may join an object.
    maxima_smooth_px, interior_smooth_px : float
        Gaussian sigma (px) applied to each map first (0 = none).
    radius_px : int
        Radius (px) of the disk within which peaks are merged.
    min_object_px : float
        Objects with fewer pixels are removed.
    max_hole_px : float
        Holes with fewer pixels inside one object are filled.

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Objects 1..N, 0 for background.
    """
    from skimage.morphology import disk, h_maxima
    from skimage.segmentation import watershed

    maxima = np.asarray(inner_distance, np.float64)
    interior = np.asarray(interior, np.float64)
    if maxima_smooth_px > 0:
        maxima = ndi.gaussian_filter(maxima, maxima_smooth_px)
    if interior_smooth_px > 0:
        interior = ndi.gaussian_filter(interior, interior_smooth_px)
    peaks = h_maxima(maxima, maxima_threshold, footprint=disk(radius_px)).astype(bool)
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3), bool))
    labels = watershed(-interior, markers, mask=interior > interior_threshold)
    labels = remove_small_labels(labels, min_object_px)
    labels = fill_label_holes(labels, max_hole_px)
    return relabel_consecutive(labels)


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
        indices = [_head_index(str(n)) for n in names]
        if all(i is not None for i in indices) and sorted(indices) == sorted(set(indices)):  # type: ignore[type-var]
            outputs = [o for _, o in sorted(zip(indices, outputs), key=lambda pair: pair[0])]
    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for compartment, (distance_head, pixel_head) in COMPARTMENT_HEADS.items():
        pixelwise = outputs[pixel_head]
        interior = pixelwise[..., _INTERIOR_CLASS] if pixelwise.shape[-1] > 1 else pixelwise[..., 0]
        result[compartment] = (outputs[distance_head][..., 0], interior)
    return result

