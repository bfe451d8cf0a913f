"""StarDist (star-convex polygon nuclei) as a segmentation backend.

The model is a ``StarDist2D`` folder as StarDist saves and loads it
(``StarDist2D(None, name, basedir)``): ``config.json``, weights
(``weights_best.h5`` or another ``*.h5``) and optionally ``thresholds.json``,
e.g. a user's copy of ``2D_versatile_fluo``. It is given by the option
``model`` (or ``--model``), else ``$TILED_SEG_STARDIST_MODEL``; nothing is
downloaded.

Normalisation: StarDist users normalise each image with its own percentiles
(``csbdeep.utils.normalize(img, 1, 99.8)``). Here the nuclear input already is
0-1 with slide-wide percentiles (``normalization.low_percentile`` /
``high_percentile`` of the run), the same mapping for every tile, so the
backend does not normalise again and tiles do not differ in contrast.

Stages, each equal to the matching step of ``StarDist2D.predict_instances``
on the tile (``n_tiles`` unset), so the labels equal its labels:

* ``prepare`` (CPU): the tile padded at its end, by reflection, to a multiple
  of the network's ``div_by`` (StarDist's ``StarDistPadAndCropResizer``);
  tiles are keyed by their padded shape, so tiles of one shape share a batch;
* ``predict`` (accelerator): the Keras model on a batch: object probability
  and ray distances at the model's grid;
* ``postprocess`` (CPU): candidates above ``prob_thresh`` outside the
  padding (StarDist's sparse route), polygon non-maximum suppression and
  rasterisation (``StarDist2D._instances_from_prediction``), ids made
  consecutive; cells are the nuclei grown by ``expansion_um`` with exclusive
  ownership (``skimage.segmentation.expand_labels``), so nucleus ``k`` lies
  inside cell ``k``.

Tiles and seams: in a tile's core the network's outputs equal the whole
slide's when the halo exceeds the network's receptive field (46 px for the
depth-2 U-Net of the tests, 94 px for ``2D_versatile_fluo``'s depth 3), and
so do the labels, but for the rare pair of overlapping polygons that StarDist's
greedy NMS resolves otherwise among another set of candidates; the automatic halo
(``max_cell_diameter_um``) only makes sure nuclei are seen whole, and the
stitching absorbs what differs beyond it. StarDist drops
candidates within 2 grid px of the padded image's end, so at the slide's
bottom and right edges a tile padded differently from the whole slide keeps
or drops other edge objects: with ``tile_px`` and the halo (px) multiples of
``div_by`` (8 here, 16 for ``2D_versatile_fluo``) every tile ends where the
whole slide would.

``n_tiles`` (StarDist's own tiling of one tile, to bound the network's memory)
has no staged form: with it the backend runs ``predict_instances`` in one
call per tile.

Keras: StarDist 0.9.2 runs on csbdeep 0.8.2, which uses Keras 3 (``keras``)
with TensorFlow >= 2.16 unless ``TF_USE_LEGACY_KERAS=1`` is set, and then
tf-keras. The ``mesmer`` backend imports ``tf_keras`` by name, so both
backends work in one environment and one process without any variable set.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from tiled_seg.errors import BackendError
from tiled_seg.labels import relabel_consecutive
from tiled_seg.segment.backends._tensorflow import allow_memory_growth
from tiled_seg.segment.backends.base import (
    BackendOptions,
    NetworkOutputs,
    PreparedTile,
    Segmentation,
    Segmenter,
    SlideContext,
)

__all__ = ["StardistOptions", "StardistSegmenter", "find_model", "grow_cells"]

ENV_MODEL = "TILED_SEG_STARDIST_MODEL"
_WEIGHTS_PATTERNS = ("*.h5", "*.hdf5")


class StardistOptions(BackendOptions):
    """Options of the ``stardist`` backend; sizes in um, converted with the pixel size."""

    #: Folder of a StarDist2D model (config.json and weights); None reads
    #: ``$TILED_SEG_STARDIST_MODEL``.
    model: str | None = None
    #: Object probability threshold; None: the model's thresholds.json.
    prob_thresh: float | None = Field(None, gt=0, lt=1)
    #: Polygon overlap above which NMS drops the weaker one; None: thresholds.json.
    nms_thresh: float | None = Field(None, gt=0, lt=1)
    #: StarDist's tiling of one tile, (y, x), to bound the network's memory;
    #: None: the whole tile in one pass (staged).
    n_tiles: tuple[int, int] | None = None
    #: Cells are the nuclei grown by this radius (um), without overlap; 0: cells = nuclei.
    expansion_um: float = Field(3.0, ge=0)
    #: Largest cell diameter (um); sets the pipeline's automatic halo.
    max_cell_diameter_um: float = Field(20.0, gt=0)
    #: Tiles of one shape per network call.
    batch_size: int = Field(1, gt=0)

    @field_validator("n_tiles")
    @classmethod
    def _positive_tiles(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError(f"n_tiles must be two integers >= 1 (y, x); got {list(value)}")
        return value


def find_model(model: str | None = None) -> Path:
    """The StarDist2D model folder named by ``model`` or ``$TILED_SEG_STARDIST_MODEL``.

    Parameters
    ----------
    model : str, optional
        The model folder (holding ``config.json`` and ``*.h5`` weights).

    Returns
    -------
    Path

    Raises
    ------
    BackendError
        No folder given, or it lacks ``config.json`` or weights; the message
        names the files expected.
    """
    given = model or os.environ.get(ENV_MODEL)
    expected = "config.json and weights (weights_best.h5 or another *.h5), optionally thresholds.json"
    if not given:
        raise BackendError(
            "the stardist backend needs a StarDist2D model folder: set the backend option "
            f"`model` (or --model, or ${ENV_MODEL}) to a folder holding {expected}, "
            "e.g. a copy of 2D_versatile_fluo."
        )
    folder = Path(given).expanduser()
    if not folder.is_dir():
        raise BackendError(
            f"StarDist model folder {folder} does not exist; point `model` at a folder "
            f"holding {expected}."
        )
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(next(folder.glob(p), None) for p in _WEIGHTS_PATTERNS):
        missing.append("weights (*.h5)")
    if missing:
        raise BackendError(
            f"StarDist model folder {folder} lacks {' and '.join(missing)}; a StarDist2D "
            f"model folder holds {expected} (as StarDist2D(None, name, basedir) loads it)."
        )
    return folder


def grow_cells(nuclei: np.ndarray, expansion_px: float) -> np.ndarray:
    """Cells as the nuclei grown by ``expansion_px``, each pixel to its nearest nucleus.

    Parameters
    ----------
    nuclei : ndarray of int, shape (Y, X)
        Nuclear labels, 0 for background.
    expansion_px : float
        Growth radius in px (>= 0).

    Returns
    -------
    ndarray of int32, shape (Y, X)
        Cell ``k`` holds nucleus ``k``; no pixel has two owners and no id
        is added or lost (:func:`skimage.segmentation.expand_labels`).

    Examples
    --------
    >>> grow_cells(np.array([[0, 1, 0, 0, 0, 2]]), 1.0).tolist()
    [[1, 1, 1, 0, 2, 2]]
    """
    from skimage.segmentation import expand_labels

    if expansion_px <= 0:
        return nuclei.astype(np.int32, copy=False)
    return expand_labels(nuclei, expansion_px).astype(np.int32, copy=False)


class StardistSegmenter(Segmenter[StardistOptions]):
    """Nuclei from a StarDist2D model; cells by exclusive expansion of the nuclei."""

    name: ClassVar[str] = "stardist"
    Options: ClassVar[type[BackendOptions]] = StardistOptions
    uses_gpu: ClassVar[bool] = True

    def __init__(self, options: StardistOptions | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        # Keras models are not safe to call from several threads at once.
        self._predict_lock = threading.Lock()

    def staged(self) -> bool:
        """Staged unless ``n_tiles`` asks for StarDist's own tiling (one-call route)."""
        n_tiles = self.options.n_tiles
        return n_tiles is None or n_tiles == (1, 1)

    def check_model(self) -> None:
        """The model folder must hold ``config.json`` and weights (nothing is loaded)."""
        find_model(self.options.model)

    def load_model(self) -> Any:
        """The ``StarDist2D`` model of the folder (called once, by :attr:`model`)."""
        folder = find_model(self.options.model)
        try:
            import tensorflow as tf
            from stardist.models import StarDist2D
        except ImportError as error:
            raise BackendError(
                f"the stardist backend needs StarDist and TensorFlow ({error.name} is "
                "missing); install them with `pip install 'tiled-seg[stardist]'`."
            ) from error
        allow_memory_growth(tf)
        # StarDist prints which weights and thresholds it loaded.
        with contextlib.redirect_stdout(io.StringIO()):
            model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
        return model

    def _thresholds(self) -> dict[str, float]:
        model, o = self.model, self.options
        return {
            "prob_thresh": o.prob_thresh if o.prob_thresh is not None else model.thresholds.prob,
            "nms_thresh": o.nms_thresh if o.nms_thresh is not None else model.thresholds.nms,
        }

    def prepare(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> PreparedTile:
        """The nuclear tile as ``(1, Y', X', 1)``, padded at its end to the network's ``div_by``.

        The membrane input is not used.
        """
        model = self.model
        image = np.asarray(nuclear, np.float32)
        div_by = model._axes_div_by("YX")
        pad = tuple((d - s % d) % d for d, s in zip(div_by, image.shape))
        padded = np.pad(image, ((0, pad[0]), (0, pad[1])), mode="reflect")[None, ..., None]
        key = f"{padded.shape[1]}x{padded.shape[2]}"
        return PreparedTile({key: padded}, {"shape": image.shape})

    def predict(self, network: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """The Keras model on ``(N, Y', X', 1)`` tiles of one shape.

        Returns the object probability ``(N, Y'/g, X'/g, 1)`` and the ray
        distances ``(N, Y'/g, X'/g, n_rays)`` (px), ``g`` the model's grid.
        """
        model = self.model
        with self._predict_lock:
            prob, dist = model.keras_model.predict(batch, verbose=0)[:2]
        return np.asarray(prob, np.float32), np.asarray(dist, np.float32)

    def postprocess(
        self, prepared: PreparedTile, outputs: NetworkOutputs, context: SlideContext
    ) -> Segmentation:
        """StarDist's candidate selection and polygon NMS, then the cells by expansion."""
        from stardist.nms import _ind_prob_thresh

        model = self.model
        thresholds = self._thresholds()
        grid = tuple(int(g) for g in model.config.grid)
        shape = prepared.state["shape"]
        ((prob, dist),) = outputs.values()
        prob, dist = prob[0, ..., 0], np.maximum(1e-3, dist[0])
        # As StarDist's sparse route: the 2-px border is excluded on the padded
        # grid, then candidates in the padding are dropped.
        keep = _ind_prob_thresh(prob, thresholds["prob_thresh"], b=2)
        points = np.stack(np.where(keep), axis=1) * np.array(grid).reshape(1, 2)
        inside = np.all(points < np.array(shape).reshape(1, 2), axis=1)
        labels, _ = model._instances_from_prediction(
            shape, prob[keep][inside], dist[keep][inside], points=points[inside], **thresholds
        )
        return self._finish(labels, context)

    def segment(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> Segmentation:
        """The three stages, or with ``n_tiles`` one ``predict_instances`` call."""
        if self.staged():
            return super().segment(nuclear, membrane, context)
        model = self.model
        with self._predict_lock:
            labels, _ = model.predict_instances(
                np.asarray(nuclear, np.float32), axes="YX", n_tiles=self.options.n_tiles,
                show_tile_progress=False, **self._thresholds(),
            )
        return self._finish(labels, context)

    def _finish(self, labels: np.ndarray, context: SlideContext) -> Segmentation:
        nuclei = relabel_consecutive(labels)
        cells = grow_cells(nuclei, self.options.expansion_um / context.pixel_size_um)
        return Segmentation(cells=cells, nuclei=nuclei)
