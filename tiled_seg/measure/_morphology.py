"""Per-cell shape descriptors: per-block partials, and the convex-hull set on crops.

The default descriptors need no loop over cells. Moment features
(:func:`moment_features`) come from per-label coordinate sums that merge
across blocks; the perimeter (:func:`perimeter_partials`) is skimage's
4-neighbourhood estimate, a sum of per-pixel weights, so each block adds the
weights of its own pixels (one compiled pass,
:func:`~tiled_seg.measure._kernels.perimeter_weights`). Both equal :func:`skimage.measure.regionprops` of
the same names (``perimeter``, ``eccentricity``, ``orientation``,
``axis_major_length``, ``axis_minor_length``).

The convex-hull descriptors (``morphology: full``) need each cell whole and
are computed per cell on crops (:func:`hull_table`). Besides skimage's
``solidity`` they follow the morphology features of the Mesmer paper
(Greenwald et al., Nat. Biotechnol. 2022, Methods), written from its
description:

- ``asymmetry``: distance (px) between the centroid of the cell and the
  centroid of its convex hull, divided by ``sqrt(area)``;
- ``concavities``: number of 4-connected components of (convex hull minus
  cell) that are either larger than ``CONCAVITY_LARGE_PX`` px, or at least
  ``CONCAVITY_MIN_PX`` px with compactness ``perimeter**2 / area`` below
  ``CONCAVITY_MAX_COMPACTNESS`` (thin slivers along a straight edge are not
  concavities);
- ``fill``: area / area with holes filled.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.measure import label, regionprops

from tiled_seg.measure._intensity import label_index
from tiled_seg.measure._kernels import perimeter_weights
from tiled_seg.tiling import Box

__all__ = [
    "HULL_COLUMNS",
    "MORPHOLOGIES",
    "hull_table",
    "moment_features",
    "perimeter_partials",
    "CONCAVITY_MIN_PX",
    "CONCAVITY_LARGE_PX",
    "CONCAVITY_MAX_COMPACTNESS",
]

#: ``default``: moments and perimeter (vectorised); ``full`` adds :data:`HULL_COLUMNS`.
MORPHOLOGIES = ("default", "full")

#: Smallest hull-minus-cell component (px) counted as a concavity.
CONCAVITY_MIN_PX = 10
#: Components above this area (px) count whatever their shape.
CONCAVITY_LARGE_PX = 150
#: Largest ``perimeter**2 / area`` of a counted small component.
CONCAVITY_MAX_COMPACTNESS = 60.0

#: Columns of :func:`hull_table` (all unitless ratios or counts).
HULL_COLUMNS = ("solidity", "asymmetry", "concavities", "fill")

#: skimage's weight of a border pixel by its neighbourhood code (``perimeter``).
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


def perimeter_partials(labels: np.ndarray, core: Box) -> tuple[np.ndarray, np.ndarray]:
    """skimage's perimeter of every label, summed over the pixels in ``core``.

    A label's pixel is a border pixel when a 4-neighbour holds another id (or
    lies outside the array); each border pixel adds a weight set by which of
    its 8 neighbours are border pixels of the same label
    (:func:`skimage.measure.perimeter` with ``neighborhood=4``, applied to
    each label alone). Summed over all blocks, this is regionprops'
    ``perimeter`` of every cell.

    Parameters
    ----------
    labels : ndarray, shape (Y, X), integer
        Labels of ``core`` and at least 2 px around it where the slide
        continues; where the array ends, the slide ends.
    core : Box
        The pixels whose weights are summed, in ``labels``' coordinates.

    Returns
    -------
    ids : ndarray of int64
        Labels with border pixels in ``core``, sorted.
    perimeter : ndarray of float64
        Their perimeter contributions (px).
    """
    own_border, weight = perimeter_weights(
        np.pad(labels, 2), core.y0, core.y1, core.x0, core.x1, _PERIMETER_WEIGHTS
    )
    ids, index = label_index(labels[core.slices][own_border])
    if ids.size == 0:
        return ids, np.zeros(0)
    return ids, np.bincount(index, weights=weight[own_border], minlength=ids.size)


def moment_features(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inertia-tensor features of each cell from its exact coordinate sums.

    Parameters
    ----------
    sums : dict of ndarray
        ``count``, ``sum_y``, ``sum_x``, ``sum_yy``, ``sum_xx``, ``sum_xy``
        (int64) and ``min_y``, ``min_x`` (px), one row per cell.

    Returns
    -------
    dict of ndarray
        ``major_axis_length`` and ``minor_axis_length`` (px),
        ``eccentricity``, ``orientation`` (rad, between the row axis and the
        major axis, in (-pi/2, pi/2]), as skimage's regionprops defines them.
    """
    n = sums["count"].astype(np.int64)
    # Moments about the box corner stay small integers, so the central
    # moments below are exact before the one division.
    ay, ax = sums["min_y"].astype(np.int64), sums["min_x"].astype(np.int64)
    sy = sums["sum_y"] - n * ay
    sx = sums["sum_x"] - n * ax
    syy = sums["sum_yy"] - 2 * ay * sums["sum_y"] + n * ay * ay
    sxx = sums["sum_xx"] - 2 * ax * sums["sum_x"] + n * ax * ax
    sxy = sums["sum_xy"] - ay * sums["sum_x"] - ax * sums["sum_y"] + n * ay * ax
    n2 = (n * n).astype(np.float64)
    # skimage's inertia tensor [[a, b], [b, c]]: a = var(x), b = -cov(y, x), c = var(y).
    a = (n * sxx - sx * sx) / n2
    c = (n * syy - sy * sy) / n2
    # Negated after the division, as skimage does: a zero covariance gives
    # b = -0.0, which decides arctan2's branch for axis-aligned cells.
    b = -((n * sxy - sy * sx) / n2)
    half_sum, half_diff = (a + c) / 2, (a - c) / 2
    root = np.sqrt(half_diff * half_diff + b * b)
    l1 = np.clip(half_sum + root, 0, None)
    l2 = np.clip(half_sum - root, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0, None)), 0.0)
    exact_a_minus_c = (n * sxx - sx * sx) - (n * syy - sy * sy)
    orientation = np.where(
        exact_a_minus_c == 0,
        np.where(b < 0, np.pi / 4, -np.pi / 4),
        0.5 * np.arctan2(-2 * b, c - a),
    )
    return {
        "major_axis_length": 4 * np.sqrt(l1),
        "minor_axis_length": 4 * np.sqrt(l2),
        "eccentricity": eccentricity,
        "orientation": orientation,
    }


def _count_concavities(image: np.ndarray, convex: np.ndarray) -> int:
    gaps = label(convex & ~image, connectivity=1)
    count = 0
    for gap in regionprops(gaps):
        area = float(gap.area)
        compact = gap.perimeter**2 / area
        if area > CONCAVITY_LARGE_PX or (
            area >= CONCAVITY_MIN_PX and compact < CONCAVITY_MAX_COMPACTNESS
        ):
            count += 1
    return count


def _centroid(mask: np.ndarray) -> np.ndarray:
    coords = np.nonzero(mask)
    return np.array([coords[0].mean(), coords[1].mean()])


def hull_table(labels: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Convex-hull descriptors of the cells ``ids`` in a ``(Y, X)`` label crop.

    Parameters
    ----------
    labels : ndarray, shape (Y, X), integer
        A crop that holds every pixel of each cell in ``ids``.
    ids : ndarray of int
        Cells to describe; other labels in the crop are ignored.

    Returns
    -------
    dict of ndarray
        ``label`` (the ids, sorted) and one array per name in
        :data:`HULL_COLUMNS`.
    """
    owned = np.where(np.isin(labels, ids), labels, 0)
    rows: dict[str, list[float]] = {name: [] for name in ("label", *HULL_COLUMNS)}
    for region in regionprops(owned):
        area = float(region.area)
        convex = region.image_convex
        asymmetry = np.linalg.norm(_centroid(region.image) - _centroid(convex)) / np.sqrt(area)
        values = {
            "label": region.label,
            "solidity": float(region.solidity),
            "asymmetry": float(asymmetry),
            "concavities": _count_concavities(region.image, convex),
            "fill": area / float(region.area_filled),
        }
        for name, value in values.items():
            rows[name].append(value)
    out = {name: np.asarray(values, dtype=np.float64) for name, values in rows.items()}
    out["label"] = out["label"].astype(np.int64)
    out["concavities"] = out["concavities"].astype(np.int64)
    return out
