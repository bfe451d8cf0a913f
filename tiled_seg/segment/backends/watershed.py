"""Classical marker-watershed segmentation: the default backend (no weights, no GPU).

Nuclei come from the nuclear image (Gaussian smoothing, a slide-wide
threshold and a local-contrast criterion, peaks of the smoothed distance transform, marker watershed);
whole cells grow from the nuclei by a watershed on the smoothed membrane
image, limited to the membrane foreground, to ``max_expansion_um`` beyond the
nucleus and to ``max_cell_diameter_um / 2`` from the nucleus centre. Where a
nucleus has no membrane signal around it, its cell is the nucleus grown by
``fallback_expansion_um``.

Every step is local (filters, distance transforms, watersheds, holes bounded
in area) and every threshold is slide-wide, so a tile's interior does not
depend on where the tile was cut: tiles stitch without seams.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage as ndi

from tiled_seg.labels import consecutive_lookup, fill_small_holes, keep_largest_piece, remove_small_labels
from tiled_seg.segment.backends.base import BackendOptions, Segmentation, Segmenter, SlideContext

__all__ = ["WatershedOptions", "WatershedSegmenter", "segment_nuclei", "grow_cells"]


class WatershedOptions(BackendOptions):
    """Options of the watershed backend; sizes in um, converted with the pixel size.

    Defaults suit ~1 um/px IMC-like data with slide-wide 0-1 normalisation.
    """

    #: Typical nucleus diameter (um); sets the disk used to find one peak per nucleus.
    nucleus_diameter_um: float = Field(7.0, gt=0)
    #: Largest cell diameter (um): cells are clipped to this distance * 0.5
    #: from their nucleus centre, and the pipeline's automatic halo uses it.
    max_cell_diameter_um: float = Field(25.0, gt=0)
    #: Gaussian sigma (um) applied to both inputs before thresholding.
    smoothing_um: float = Field(0.7, ge=0)
    #: Multiplies the slide-wide nuclear Otsu threshold (ignored when
    #: ``nuclear_threshold`` is given).
    threshold_scale: float = Field(1.0, gt=0)
    #: Explicit nuclear threshold in normalised (0-1) units, or None for
    #: ``threshold_scale * context.nuclear_threshold``.
    nuclear_threshold: float | None = Field(None, ge=0, le=1)
    #: A nuclear pixel must also exceed this fraction of the brightest
    #: smoothed value within ``nucleus_diameter_um`` of it, so dim nuclei
    #: next to bright ones are found and bright ones do not bleed (0 = off).
    local_contrast: float = Field(0.3, ge=0, lt=1)
    #: Minimum distance between two nuclear peaks, as a fraction of
    #: ``nucleus_diameter_um``.
    peak_separation: float = Field(0.5, gt=0, le=2)
    #: Nuclei smaller than this (um^2) are dropped.
    min_nucleus_area_um2: float = Field(8.0, ge=0)
    #: Holes in nuclei smaller than this (um^2) are filled.
    max_hole_area_um2: float = Field(10.0, ge=0)
    #: Multiplies the slide-wide membrane Otsu threshold that defines the
    #: membrane foreground cells may grow into.
    membrane_threshold_scale: float = Field(0.2, gt=0)
    #: Furthest (um) a cell reaches beyond its nucleus's edge.
    max_expansion_um: float = Field(4.0, ge=0)
    #: Growth (um) of a nucleus that has no membrane signal around it.
    fallback_expansion_um: float = Field(1.0, ge=0)
    #: Compactness of the cell watershed (0 = plain watershed).
    compactness: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _sizes_fit(self) -> WatershedOptions:
        if self.nucleus_diameter_um > self.max_cell_diameter_um:
            raise ValueError(
                f"nucleus_diameter_um={self.nucleus_diameter_um} exceeds "
                f"max_cell_diameter_um={self.max_cell_diameter_um}; raise the latter."
            )
        if self.fallback_expansion_um > self.max_expansion_um:
            raise ValueError(
                f"fallback_expansion_um={self.fallback_expansion_um} exceeds "
                f"max_expansion_um={self.max_expansion_um}; lower it or raise max_expansion_um."
            )
        return self


def disk_footprint(radius_px: float) -> np.ndarray:
    """Boolean disk of radius ``radius_px`` (px), at least 3 x 3."""
    r = max(int(math.floor(radius_px)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= radius_px**2 + 1e-9


def gaussian_smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian smoothing (``sigma_px`` in px, edges repeated) as float32; 0 keeps the image."""
    image = image.astype(np.float32, copy=False)
    return ndi.gaussian_filter(image, sigma_px, mode="nearest") if sigma_px > 0 else image


def segment_nuclei(
    nuclear: np.ndarray, options: WatershedOptions, context: SlideContext
) -> np.ndarray:
    """Nuclear instance labels from a normalised nuclear image.

    Parameters
    ----------
    nuclear : ndarray, shape (Y, X), float
        Nuclear input normalised with slide-wide statistics (0-1).
    options : WatershedOptions
    context : SlideContext
        Pixel size (um/px) and the slide-wide nuclear threshold.

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Nuclei labelled 1..N (not necessarily 4-connected), 0 for background.
    """
    px = context.pixel_size_um
    smooth = gaussian_smooth(nuclear, options.smoothing_um / px)
    threshold = (
        options.nuclear_threshold
        if options.nuclear_threshold is not None
        else options.threshold_scale * context.nuclear_threshold
    )
    foreground = smooth > threshold
    if options.local_contrast > 0:
        # A square window keeps the maximum filter separable (fast).
        window = 2 * int(round(options.nucleus_diameter_um / px)) + 1
        foreground &= smooth > options.local_contrast * ndi.maximum_filter(
            smooth, size=window, mode="nearest"
        )
    foreground = fill_small_holes(foreground, options.max_hole_area_um2 / px**2)
    distance = ndi.distance_transform_edt(foreground).astype(np.float32)
    # Smoothing the distance merges the ridge maxima of elongated nuclei, and
    # a tiny intensity term breaks exact ties between equal distances.
    score = gaussian_smooth(distance, 0.15 * options.nucleus_diameter_um / px) + 1e-3 * smooth
    radius_px = 0.5 * options.peak_separation * options.nucleus_diameter_um / px
    peaks = (score == ndi.maximum_filter(score, footprint=disk_footprint(radius_px), mode="nearest"))
    markers, _ = ndi.label(peaks & foreground, structure=np.ones((3, 3), bool))
    from skimage.segmentation import watershed

    nuclei = watershed(-score, markers, mask=foreground)
    return remove_small_labels(nuclei, options.min_nucleus_area_um2 / px**2)


def grow_cells(
    nuclei: np.ndarray,
    membrane: np.ndarray | None,
    options: WatershedOptions,
    context: SlideContext,
) -> np.ndarray:
    """Whole-cell labels grown from nuclei over the membrane image.

    Parameters
    ----------
    nuclei : ndarray of int, shape (Y, X)
        Nuclear labels (seeds); cell ``k`` grows from nucleus ``k``.
    membrane : ndarray, shape (Y, X), float, or None
        Membrane input normalised slide-wide (0-1); None grows every nucleus
        by ``fallback_expansion_um``.
    options : WatershedOptions
    context : SlideContext
        Pixel size (um/px) and the slide-wide membrane threshold.

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Cells with the ids of their nuclei; every nucleus pixel keeps its id.
    """
    from skimage.segmentation import expand_labels, watershed

    px = context.pixel_size_um
    near = expand_labels(nuclei, options.fallback_expansion_um / px)
    if membrane is None:
        cells = near
    else:
        smooth = gaussian_smooth(membrane, options.smoothing_um / px)
        signal = smooth > options.membrane_threshold_scale * context.membrane_threshold
        max_area_px = math.pi * (0.5 * options.max_cell_diameter_um / px) ** 2
        mask = fill_small_holes(signal | (near > 0), max_area_px)
        mask &= expand_labels(nuclei, options.max_expansion_um / px) > 0
        cells = watershed(smooth, nuclei, mask=mask, compactness=options.compactness)
    return clip_radius(cells, nuclei, 0.5 * options.max_cell_diameter_um / px)


def clip_radius(cells: np.ndarray, nuclei: np.ndarray, radius_px: float) -> np.ndarray:
    """Drop cell pixels further than ``radius_px`` from their nucleus centroid."""
    n = int(cells.max())
    if n == 0:
        return cells
    yy, xx = np.indices(nuclei.shape)
    area = np.bincount(nuclei.ravel(), minlength=n + 1).astype(np.float64)
    area[area == 0] = 1.0
    cy = np.bincount(nuclei.ravel(), weights=yy.ravel(), minlength=n + 1) / area
    cx = np.bincount(nuclei.ravel(), weights=xx.ravel(), minlength=n + 1) / area
    far = (yy - cy[cells]) ** 2 + (xx - cx[cells]) ** 2 > radius_px**2
    return np.where(far & (nuclei == 0), 0, cells)


class WatershedSegmenter(Segmenter[WatershedOptions]):
    """Nuclear marker watershed plus membrane-guided cell growth (CPU, no weights)."""

    name: ClassVar[str] = "watershed"
    Options: ClassVar[type[BackendOptions]] = WatershedOptions

    def segment(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> Segmentation:
        """Segment one tile; see :class:`Segmenter`."""
        options = self.options
        nuclei = segment_nuclei(nuclear, options, context)
        cells = keep_largest_piece(grow_cells(nuclei, membrane, options, context))
        nuclei = keep_largest_piece(np.where(cells == nuclei, nuclei, 0))
        # Renumber both by one map so that nucleus k stays inside cell k.
        lookup = consecutive_lookup(nuclei, size=int(cells.max(initial=0)) + 1)
        return Segmentation(cells=lookup[cells], nuclei=lookup[nuclei])
