"""Cells from pixel probabilities, CellProfiler style (the ilastik / steinbock route).

The probabilities are nucleus, cytoplasm and background per pixel, as ilastik
exports them for steinbock. They come either from the slide (the panel names
the probability channels as its nuclear and membrane inputs, normalised with
``normalization.fixed_range: {nucleus: [0, 1], cytoplasm: [0, 1]}`` so they
stay probabilities) or from the built-in pixel classifier (``classifier``:
a model from ``tiled-seg train-pixels``), computed per tile from the
normalised nuclear and membrane inputs.

Then, as CellProfiler's IdentifyPrimaryObjects / IdentifySecondaryObjects:

* primary objects (nuclei): Gaussian smoothing of the nucleus probability, a
  manual threshold, holes filled, clumps split by a watershed from maxima of
  the smoothed intensity or of the distance transform (shape), maxima closer
  than ``maxima_suppression_um`` suppressed, objects outside the typical
  diameter range discarded;
* secondary objects (cells) by propagation: a watershed seeded by the nuclei
  on the gradient of the cytoplasm probability, regularised by the distance
  from the nucleus (CellProfiler's lambda), limited to the smoothed
  nucleus + cytoplasm probability above ``secondary_threshold``.

Thresholds are fixed probabilities, never per-tile Otsu (which would give
every tile its own threshold and seams), and every step is local, so the
labels of a tile's interior do not depend on where the tile was cut.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage as ndi

from tiled_seg.errors import BackendError, InputNotFoundError
from tiled_seg.labels import fill_small_holes, keep_largest_piece, relabel_consecutive
from tiled_seg.segment.backends.base import BackendOptions, Segmentation, Segmenter, SlideContext
from tiled_seg.segment.backends.watershed import clip_radius, disk_footprint, gaussian_smooth

if TYPE_CHECKING:
    from tiled_seg.segment.pixels import PixelClassifier

__all__ = [
    "ProbabilitiesOptions",
    "ProbabilitiesSegmenter",
    "identify_primary",
    "identify_secondary",
]


class ProbabilitiesOptions(BackendOptions):
    """Options of the probabilities backend: CellProfiler's settings, sizes in um."""

    #: A pixel classifier (``.npz`` from ``tiled-seg train-pixels``) that
    #: computes the probabilities from the nuclear and membrane inputs; None:
    #: the inputs are the nucleus and cytoplasm probabilities themselves.
    classifier: str | None = None
    #: Typical nucleus diameter (min, max) in um; nuclei outside are discarded
    #: (CellProfiler's "Typical diameter of objects").
    typical_diameter_um: tuple[float, float] = (4.0, 15.0)
    #: Gaussian sigma (um) applied to the probabilities before thresholding
    #: (CellProfiler's threshold smoothing scale).
    smoothing_um: float = Field(0.5, ge=0)
    #: Nucleus probability above which a pixel is nuclear (a manual threshold).
    threshold: float = Field(0.5, gt=0, lt=1)
    #: How clumped nuclei are split: "shape" (maxima of the distance
    #: transform; suits probabilities, which are flat inside nuclei),
    #: "intensity" (maxima of the smoothed probability) or "none".
    declump: Literal["shape", "intensity", "none"] = "shape"
    #: Gaussian sigma (um) of the image whose maxima seed the split; None:
    #: min typical diameter / 3.5, CellProfiler's automatic choice.
    declump_smoothing_um: float | None = Field(None, ge=0)
    #: Maxima closer than this (um) are suppressed; None: min typical
    #: diameter / 1.5, CellProfiler's automatic choice.
    maxima_suppression_um: float | None = Field(None, gt=0)
    #: Fill holes in nuclei and cells (holes up to the largest cell's area).
    fill_holes: bool = True
    #: Nucleus + cytoplasm probability above which a pixel belongs to a cell.
    secondary_threshold: float = Field(0.5, gt=0, lt=1)
    #: CellProfiler's propagation lambda: weight of the distance from the
    #: nucleus (per um) against steps of the cytoplasm probability (per um);
    #: larger gives rounder, more Voronoi-like cells.
    regularization_factor: float = Field(0.05, ge=0)
    #: Largest cell diameter (um): cells are clipped to half of it from their
    #: nucleus centre; the automatic halo uses it.
    max_cell_diameter_um: float = Field(25.0, gt=0)

    @model_validator(mode="after")
    def _sizes_fit(self) -> ProbabilitiesOptions:
        low, high = self.typical_diameter_um
        if not 0 < low <= high:
            raise ValueError(
                f"typical_diameter_um must be [min, max] with 0 < min <= max; got [{low}, {high}]"
            )
        if high > self.max_cell_diameter_um:
            raise ValueError(
                f"typical_diameter_um max {high} exceeds max_cell_diameter_um="
                f"{self.max_cell_diameter_um}; raise the latter."
            )
        return self


def _declump_score(
    smooth: np.ndarray, foreground: np.ndarray, options: ProbabilitiesOptions, px: float
) -> np.ndarray:
    """Image whose maxima seed the split of clumped nuclei (higher = more central)."""
    low = options.typical_diameter_um[0]
    sigma_um = options.declump_smoothing_um if options.declump_smoothing_um is not None else low / 3.5
    distance = ndi.distance_transform_edt(foreground).astype(np.float32)
    # Each score gets a small share of the other so that equal values (flat
    # probabilities, ridges of the distance) still have one maximum.
    if options.declump == "shape":
        return gaussian_smooth(distance, sigma_um / px) + 1e-3 * smooth
    return gaussian_smooth(smooth, sigma_um / px) + 1e-3 * distance


def identify_primary(
    nucleus: np.ndarray, options: ProbabilitiesOptions, context: SlideContext
) -> np.ndarray:
    """Nuclei from a nucleus probability, as CellProfiler's IdentifyPrimaryObjects.

    Parameters
    ----------
    nucleus : ndarray, shape (Y, X), float
        Nucleus probability (0-1).
    options : ProbabilitiesOptions
    context : SlideContext
        Pixel size (um/px).

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Nuclei labelled with positive ids (not consecutive), 0 for background.

    Examples
    --------
    >>> p = np.zeros((40, 40), np.float32); p[5:15, 5:15] = 1; p[20:32, 22:34] = 1
    >>> labels = identify_primary(p, ProbabilitiesOptions(), SlideContext(1.0))
    >>> len(np.unique(labels)) - 1
    2
    """
    from skimage.segmentation import watershed

    px = context.pixel_size_um
    low, high = options.typical_diameter_um
    smooth = gaussian_smooth(nucleus, options.smoothing_um / px)
    foreground = smooth > options.threshold
    if options.fill_holes:
        foreground = fill_small_holes(foreground, math.pi * (0.5 * high / px) ** 2)
    if options.declump == "none":
        labels, _ = ndi.label(foreground)
    else:
        score = _declump_score(smooth, foreground, options, px)
        suppression_um = options.maxima_suppression_um or low / 1.5
        peaks = score == ndi.maximum_filter(score, footprint=disk_footprint(suppression_um / px), mode="nearest")
        markers, _ = ndi.label(peaks & foreground, structure=np.ones((3, 3), bool))
        labels = watershed(-score, markers, mask=foreground)
    area = np.bincount(labels.ravel())
    diameter_px = 2 * np.sqrt(area / math.pi)
    outside = (diameter_px < low / px) | (diameter_px > high / px)
    outside[0] = False
    return np.where(outside[labels], 0, labels).astype(np.int32)


def identify_secondary(
    nuclei: np.ndarray, nucleus: np.ndarray, cytoplasm: np.ndarray,
    options: ProbabilitiesOptions, context: SlideContext,
) -> np.ndarray:
    """Cells grown from nuclei by propagation, as CellProfiler's IdentifySecondaryObjects.

    Parameters
    ----------
    nuclei : ndarray of int, shape (Y, X)
        Seeds; cell ``k`` grows from nucleus ``k``.
    nucleus, cytoplasm : ndarray, shape (Y, X), float
        Nucleus and cytoplasm probabilities (0-1).
    options : ProbabilitiesOptions
    context : SlideContext
        Pixel size (um/px).

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Cells with the ids of their nuclei; every nucleus pixel keeps its id.
    """
    from skimage.segmentation import watershed

    px = context.pixel_size_um
    sigma_px = options.smoothing_um / px
    mask = (gaussian_smooth(nucleus + cytoplasm, sigma_px) > options.secondary_threshold) | (nuclei > 0)
    radius_px = 0.5 * options.max_cell_diameter_um / px
    if options.fill_holes:
        mask = fill_small_holes(mask, math.pi * radius_px**2)
    # The gradient per um against the distance in um, weighted by lambda; a
    # Gaussian derivative needs some width even when smoothing_um is 0.
    step = ndi.gaussian_gradient_magnitude(cytoplasm.astype(np.float32), max(sigma_px, 0.5),
                                           mode="nearest") / px
    cells = watershed(step, nuclei, mask=mask, compactness=options.regularization_factor * px)
    return clip_radius(cells, nuclei, radius_px).astype(np.int32)


class ProbabilitiesSegmenter(Segmenter[ProbabilitiesOptions]):
    """Nuclei and cells from nucleus / cytoplasm probabilities (CPU, CellProfiler style)."""

    name: ClassVar[str] = "probabilities"
    Options: ClassVar[type[BackendOptions]] = ProbabilitiesOptions

    def load_model(self) -> PixelClassifier | None:
        """The pixel classifier of the options, or None (the inputs are probabilities)."""
        from tiled_seg.segment.pixels import load_classifier

        path = self.options.classifier
        try:
            return None if path is None else load_classifier(Path(path).expanduser())
        except InputNotFoundError as error:
            raise BackendError(str(error)) from error

    def check_model(self) -> None:
        """Read the classifier (a small file), so a missing or foreign one fails before the run."""
        self.model

    def halo_px(self, pixel_size_um: float) -> int:
        """The largest cell diameter plus the reach of the classifier's features (px)."""
        classifier = self.model
        return super().halo_px(pixel_size_um) + (0 if classifier is None else classifier.reach_px)

    def probabilities(
        self, nuclear: np.ndarray, membrane: np.ndarray | None, context: SlideContext
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Nucleus and cytoplasm probability of a tile (cytoplasm None without one)."""
        classifier = self.model
        if classifier is None:
            return nuclear, membrane
        from tiled_seg.segment.pixels import predict_pixels

        if abs(classifier.pixel_size_um - context.pixel_size_um) > 0.01 * classifier.pixel_size_um:
            raise BackendError(
                f"pixel classifier {self.options.classifier} was "
                f"trained at {classifier.pixel_size_um} um/px, the slide has "
                f"{context.pixel_size_um} um/px; its features are in px, so train it on this slide."
            )
        images = [nuclear]
        if "membrane" in classifier.inputs:
            if membrane is None:
                raise BackendError(
                    "the pixel classifier was trained on nuclear and membrane inputs but the run "
                    "has no membrane input; name the membrane channels in the panel "
                    "(and use compartment whole-cell or both)."
                )
            images.append(membrane)
        maps = predict_pixels(classifier, images)
        return maps[classifier.classes.index("nucleus")], maps[classifier.classes.index("cytoplasm")]

    def segment(
        self, nuclear: np.ndarray, membrane: np.ndarray | None, context: SlideContext
    ) -> Segmentation:
        """Segment one tile; see :class:`Segmenter`."""
        options = self.options
        nucleus, cytoplasm = self.probabilities(nuclear, membrane, context)
        nuclei = identify_primary(nucleus, options, context)
        if cytoplasm is None:
            nuclei = relabel_consecutive(keep_largest_piece(nuclei))
            return Segmentation(cells=nuclei, nuclei=nuclei)
        cells = keep_largest_piece(identify_secondary(nuclei, nucleus, cytoplasm, options, context))
        nuclei = keep_largest_piece(np.where(cells == nuclei, nuclei, 0))
        # Cells without their nucleus (lost to the largest-piece rule) go too.
        has_nucleus = np.zeros(int(cells.max(initial=0)) + 1, dtype=bool)
        has_nucleus[nuclei] = True  # nucleus ids are cell ids, by the line above
        cells = np.where(has_nucleus[cells], cells, 0)
        # One renumbering of both keeps nucleus k inside cell k.
        both = relabel_consecutive(np.stack([nuclei, cells]))
        return Segmentation(cells=both[1], nuclei=both[0])
