"""Per-cell shape descriptors on a crop holding whole cells.

The skimage descriptors (area, perimeter, eccentricity, solidity, axis
lengths) are those of :func:`skimage.measure.regionprops`. The others follow
the morphology features of the Mesmer paper (Greenwald et al., Nat.
Biotechnol. 2022, Methods), written from its description:

- ``asymmetry``: distance (px) between the centroid of the cell and the
  centroid of its convex hull, divided by ``sqrt(area)``;
- ``concavities``: number of 4-connected components of (convex hull minus
  cell) that are either larger than ``CONCAVITY_LARGE_PX`` px, or at least
  ``CONCAVITY_MIN_PX`` px with compactness ``perimeter**2 / area`` below
  ``CONCAVITY_MAX_COMPACTNESS`` (thin slivers along a straight edge are not
  concavities);
- ``fill``: area / area with holes filled;
- ``aspect_ratio``: major axis length / equivalent circular diameter;
- ``perimeter2_over_area``: perimeter**2 / area.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label, regionprops

__all__ = [
    "MORPHOLOGY_COLUMNS",
    "morphology_table",
    "CONCAVITY_MIN_PX",
    "CONCAVITY_LARGE_PX",
    "CONCAVITY_MAX_COMPACTNESS",
]

#: Smallest hull-minus-cell component (px) counted as a concavity.
CONCAVITY_MIN_PX = 10
#: Components above this area (px) count whatever their shape.
CONCAVITY_LARGE_PX = 150
#: Largest ``perimeter**2 / area`` of a counted small component.
CONCAVITY_MAX_COMPACTNESS = 60.0

MORPHOLOGY_COLUMNS = (
    "perimeter",
    "eccentricity",
    "solidity",
    "major_axis_length",
    "minor_axis_length",
    "asymmetry",
    "concavities",
    "fill",
    "aspect_ratio",
    "perimeter2_over_area",
)


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


def morphology_table(labels: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Shape descriptors of the cells ``ids`` in a ``(Y, X)`` label crop.

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
        :data:`MORPHOLOGY_COLUMNS`; lengths in px, areas in px**2.
    """
    owned = np.where(np.isin(labels, ids), labels, 0)
    rows: dict[str, list[float]] = {name: [] for name in ("label", *MORPHOLOGY_COLUMNS)}
    for region in regionprops(owned):
        area = float(region.area)
        perimeter = float(region.perimeter)
        major = float(region.axis_major_length)
        convex = region.image_convex
        asymmetry = np.linalg.norm(_centroid(region.image) - _centroid(convex)) / np.sqrt(area)
        values = {
            "label": region.label,
            "perimeter": perimeter,
            "eccentricity": float(region.eccentricity),
            "solidity": float(region.solidity),
            "major_axis_length": major,
            "minor_axis_length": float(region.axis_minor_length),
            "asymmetry": float(asymmetry),
            "concavities": _count_concavities(region.image, convex),
            "fill": area / float(region.area_filled),
            "aspect_ratio": major / float(region.equivalent_diameter_area),
            "perimeter2_over_area": perimeter**2 / area,
        }
        for name, value in values.items():
            rows[name].append(value)
    out = {name: np.asarray(values, dtype=np.float64) for name, values in rows.items()}
    out["label"] = out["label"].astype(np.int64)
    out["concavities"] = out["concavities"].astype(np.int64)
    return out
