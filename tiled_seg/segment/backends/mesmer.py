"""Mesmer (DeepCell's MultiplexSegmentation model) as a segmentation backend.

Two routes, chosen by the option ``use_deepcell_package`` ("auto", true, false):

* **Own route** (Python >= 3.11, ``pip install 'tiled-seg[mesmer]'``:
  TensorFlow + tf-keras). The SavedModel is loaded with
  ``tf_keras.models.load_model`` from a local folder: option ``model_path``,
  else ``$TILED_SEG_MESMER_MODEL``, else DeepCell's cache
  ``~/.deepcell/models/MultiplexSegmentation`` (a ``MultiplexSegmentation-9.tar.gz``
  lying there is extracted first). Pre- and post-processing are DeepCell's
  own (:mod:`tiled_seg.segment.backends._mesmer_processing`, equal pixel for pixel
  to ``deepcell.applications.Mesmer`` on ``deepcell-toolbox`` 0.12.1): the
  tile (nuclear, membrane) is resized from the slide's pixel size
  (``context.pixel_size_um``, Mesmer's ``image_mpp``) to the model's
  0.5 um/px, clipped and CLAHE-equalised, run in the model's 256 x 256
  windows at a stride of 3/4 blended with spline weights, turned into
  instances by DeepCell's deep watershed per compartment (defaults of
  ``Mesmer.predict``) and resized back to the tile's shape.
  In the pipeline these are three stages: ``prepare`` (resize, clip,
  CLAHE, cut the windows), ``predict`` (the network on window batches, which
  may come from several tiles) and ``postprocess`` (blend, deep watershed,
  resize back).
* **DeepCell route** (Python 3.10 with ``deepcell`` installed):
  ``deepcell.applications.Mesmer(model).predict(...)`` with the same model and
  thresholds. Without a local model DeepCell downloads one itself, which needs
  a ``DEEPCELL_ACCESS_TOKEN`` (from users.deepcell.org).

Weights: DeepCell's model ``MultiplexSegmentation-9.tar.gz`` is fetched with
an access token from users.deepcell.org; unpack it and point ``model_path``
(or ``$TILED_SEG_MESMER_MODEL``) at the ``MultiplexSegmentation`` folder.

Normalisation and seams: Mesmer clips each image at its own 99.9th
percentile (of the non-zero pixels) and equalises it with CLAHE; both are
per-input operations, and the network was trained on them, so both are on by
default and a tile equals ``Mesmer.predict`` on that tile. The tile input is
already clipped with slide-wide percentiles; ``percentile: null`` skips the
per-tile clip (one of the two per-tile operations, so tiles differ less in
contrast at seams), at the price of no longer equalling DeepCell. The halo
and maximum-overlap stitching absorb what per-tile contrast remains.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from tiled_seg.errors import BackendError
from tiled_seg.labels import relabel_consecutive
from tiled_seg.segment.backends import _mesmer_processing as processing
from tiled_seg.segment.backends._blended_windows import BlendLayout, blend_windows, cut_blended
from tiled_seg.segment.backends._instances import link_nuclei
from tiled_seg.segment.backends._tensorflow import allow_memory_growth
from tiled_seg.segment.backends.base import (
    BackendOptions,
    NetworkOutputs,
    PreparedTile,
    Segmentation,
    Segmenter,
    SlideContext,
    predict_tiles,
)

__all__ = ["MesmerOptions", "MesmerSegmenter", "find_model", "load_keras_model"]

ENV_MODEL = "TILED_SEG_MESMER_MODEL"
MODEL_NAME = "MultiplexSegmentation"
MODEL_ARCHIVE = "MultiplexSegmentation-9.tar.gz"
DEEPCELL_CACHE = Path("~/.deepcell/models")


class MesmerOptions(BackendOptions):
    """Options of the ``mesmer`` backend."""

    #: SavedModel folder (or its ``.tar.gz``); None: $TILED_SEG_MESMER_MODEL, then DeepCell's cache.
    model_path: str | None = None
    #: "auto": use the ``deepcell`` package when importable; true: require it; false: never.
    use_deepcell_package: Literal["auto"] | bool = "auto"
    #: Which labels to produce: cells only, nuclei only (returned as cells too), or both.
    compartment: Literal["whole-cell", "nuclear", "both"] = "both"
    #: Pixel size (um/px) the model was trained at.
    model_mpp: float = Field(0.5, gt=0)
    #: Per-tile percentile clip (DeepCell's); None relies on the slide-wide clip of the input.
    percentile: float | None = Field(99.9, gt=0, le=100)
    #: CLAHE equalisation as in training (per-input; see the module notes).
    clahe: bool = True
    #: CLAHE kernel size (px at the model's pixel size).
    clahe_kernel_px: int = Field(128, gt=0)
    #: Window side (px) when the model's input size is not fixed.
    window_px: int = Field(256, gt=0)
    #: Window stride as a fraction of the window (DeepCell's 0.75).
    stride_ratio: float = Field(0.75, gt=0, le=1)
    #: Windows per inference call.
    batch_size: int = Field(4, gt=0)
    #: Whole-cell peak (h-maxima) threshold of the inner distance (Mesmer.predict's).
    maxima_threshold: float = Field(processing.WHOLE_CELL.maxima_threshold, ge=0)
    #: Whole-cell interior probability threshold.
    interior_threshold: float = Field(processing.WHOLE_CELL.interior_threshold, ge=0, lt=1)
    #: Nuclear peak threshold.
    nuclear_maxima_threshold: float = Field(processing.NUCLEAR.maxima_threshold, ge=0)
    #: Nuclear interior threshold.
    nuclear_interior_threshold: float = Field(processing.NUCLEAR.interior_threshold, ge=0, lt=1)
    #: Gaussian sigma (px, model resolution) applied to the interior map.
    interior_smooth_px: float = Field(2.0, ge=0)
    #: Gaussian sigma (px, model resolution) applied to the inner distance.
    maxima_smooth_px: float = Field(0.0, ge=0)
    #: Disk radius (px, model resolution) merging nearby peaks.
    radius_px: int = Field(2, ge=1)
    #: Objects smaller than this (px at the model's pixel size) are removed.
    min_object_px: int = Field(15, ge=0)
    #: Holes smaller than this (px at the model's pixel size) are filled.
    max_hole_px: int = Field(15, ge=0)
    #: Largest cell diameter (um); sets the pipeline's automatic halo.
    max_cell_diameter_um: float = Field(30.0, gt=0)


def find_model(model_path: str | None = None) -> Path:
    """Locate Mesmer's SavedModel folder.

    Looks at ``model_path``, then ``$TILED_SEG_MESMER_MODEL``, then DeepCell's
    cache ``~/.deepcell/models/MultiplexSegmentation``; a ``.tar.gz`` found
    instead of a folder is extracted next to itself.

    Raises
    ------
    BackendError
        Nothing found; the message lists where it looked and how to get it.
    """
    given = model_path or os.environ.get(ENV_MODEL)
    cache = DEEPCELL_CACHE.expanduser()
    candidates = (
        [Path(given).expanduser()] if given else [cache / MODEL_NAME, cache / MODEL_ARCHIVE]
    )
    for candidate in candidates:
        if candidate.is_dir() and (candidate / "saved_model.pb").is_file():
            return candidate
        if candidate.is_file() and candidate.name.endswith((".tar.gz", ".tgz")):
            return _extract(candidate)
        if candidate.is_dir() and (candidate / MODEL_NAME / "saved_model.pb").is_file():
            return candidate / MODEL_NAME
    raise BackendError(
        "no Mesmer model found (looked at "
        + ", ".join(str(c) for c in candidates)
        + "). Get DeepCell's MultiplexSegmentation model: with a DeepCell access token "
        "(users.deepcell.org) set DEEPCELL_ACCESS_TOKEN and let deepcell download it, or "
        f"download {MODEL_ARCHIVE} from users.deepcell.org and unpack it; then set the "
        f"backend option `model_path` or ${ENV_MODEL} to the {MODEL_NAME} folder."
    )


def _extract(archive: Path) -> Path:
    target = archive.parent
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    for folder in (target / MODEL_NAME, target):
        if (folder / "saved_model.pb").is_file():
            return folder
    raise BackendError(f"{archive} holds no SavedModel ({MODEL_NAME}/saved_model.pb).")


def load_keras_model(path: Path) -> Any:
    """Load a legacy Keras SavedModel with tf-keras (TensorFlow >= 2.16)."""
    try:
        import tensorflow as tf
        import tf_keras
    except ImportError as error:
        raise BackendError(
            f"the mesmer backend needs TensorFlow and tf-keras ({error.name} is missing); "
            "install them with `pip install 'tiled-seg[mesmer]'`."
        ) from error
    allow_memory_growth(tf)
    return tf_keras.models.load_model(str(path), compile=False)


def _deepcell_available() -> bool:
    try:
        import deepcell.applications  # noqa: F401
    except ImportError:
        return False
    return True


class MesmerSegmenter(Segmenter[MesmerOptions]):
    """Whole cells and nuclei from DeepCell's Mesmer model."""

    name: ClassVar[str] = "mesmer"
    Options: ClassVar[type[BackendOptions]] = MesmerOptions
    uses_gpu: ClassVar[bool] = True

    def __init__(self, options: MesmerOptions | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._app: Any = None

    def _use_deepcell(self) -> bool:
        choice = self.options.use_deepcell_package
        if choice is True and not _deepcell_available():
            raise BackendError(
                "use_deepcell_package=true but `deepcell` is not importable (it needs "
                "Python < 3.11); set it to auto or false to use the built-in route."
            )
        return choice is True or (choice == "auto" and _deepcell_available())

    def check_model(self) -> None:
        """A SavedModel must be found, unless DeepCell may download one with a token."""
        if self.options.model_path or not os.environ.get("DEEPCELL_ACCESS_TOKEN"):
            find_model(self.options.model_path)

    def load_model(self) -> Any:
        """The Keras model: through a DeepCell application where that route is chosen."""
        if not self._use_deepcell():
            return load_keras_model(find_model(self.options.model_path))
        from deepcell.applications import Mesmer

        model = None
        if self.options.model_path or os.environ.get(ENV_MODEL) or (
            DEEPCELL_CACHE.expanduser() / MODEL_NAME
        ).is_dir():
            model = load_keras_model(find_model(self.options.model_path))
        elif not os.environ.get("DEEPCELL_ACCESS_TOKEN"):
            find_model(None)  # raises with the full explanation
        self._app = Mesmer(model=model)
        return self._app.model

    def _window_px(self) -> int:
        """The model's window side (px at the model's pixel size)."""
        shape = getattr(self.model, "input_shape", (None, None, None, 2))
        return int(shape[1]) if shape[1] else self.options.window_px

    def prepare(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> PreparedTile:
        """Stack (nuclear, membrane), resize to the model's pixel size, preprocess, cut windows."""
        o = self.options
        image = _stack(nuclear, membrane)
        resized = processing.resize_input(image, context.pixel_size_um, o.model_mpp)
        prepared = processing.preprocess(resized, o.percentile, o.clahe, o.clahe_kernel_px)
        windows, layout = cut_blended(prepared, self._window_px(), o.stride_ratio)
        return PreparedTile({"mesmer": windows}, {"layout": layout, "shape": nuclear.shape})

    def predict(self, network: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Mesmer on a batch of ``(N, W, W, 2)`` windows.

        Returns (cell inner distance, cell interior, nuclear inner distance,
        nuclear interior), each ``(N, W, W, 1)``.
        """
        model = self.model
        names = [str(n) for n in getattr(model, "output_names", [])] or None
        outputs = model(batch, training=False)
        keys: list[str] | None
        if isinstance(outputs, dict):
            keys = list(outputs)
            outputs = [outputs[k] for k in keys]
        else:
            keys = names
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        maps = processing.split_outputs([np.asarray(o) for o in outputs], keys)
        return tuple(np.asarray(m[..., None], np.float32) for pair in maps.values() for m in pair)

    def predict_maps(self, image: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Network maps of a preprocessed ``(Y, X, 2)`` image at the model's pixel size.

        Returns ``{compartment: (inner_distance, interior)}``, each ``(Y, X)``.
        """
        windows, layout = cut_blended(image, self._window_px(), self.options.stride_ratio)
        (outputs,) = predict_tiles(self, [PreparedTile({"mesmer": windows}, {})])
        return self._maps(outputs["mesmer"], layout)

    @staticmethod
    def _maps(
        outputs: tuple[np.ndarray, ...], layout: BlendLayout
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        cell_d, cell_i, nuc_d, nuc_i = (m[..., 0] for m in blend_windows(outputs, layout))
        return {"whole-cell": (cell_d, cell_i), "nuclear": (nuc_d, nuc_i)}

    def postprocess(
        self, prepared: PreparedTile, outputs: NetworkOutputs, context: SlideContext
    ) -> Segmentation:
        """Deep watershed of the assembled maps, resized to the tile."""
        return self.instances(self._maps(outputs["mesmer"], prepared.state["layout"]), prepared.state["shape"])

    def instances(
        self, maps: dict[str, tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]
    ) -> Segmentation:
        """Instances from the network maps, resized to the tile's ``shape``."""
        return self._assemble(self.label_stack(maps, shape))

    def label_stack(
        self, maps: dict[str, tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]
    ) -> dict[str, np.ndarray]:
        """DeepCell's labels per compartment, resized to ``shape`` (nuclei not yet linked)."""
        o = self.options
        wanted = ["whole-cell", "nuclear"] if o.compartment == "both" else [o.compartment]
        found = []
        for compartment in wanted:
            nuclear = compartment == "nuclear"
            settings = processing.WatershedSettings(
                maxima_threshold=o.nuclear_maxima_threshold if nuclear else o.maxima_threshold,
                interior_threshold=o.nuclear_interior_threshold if nuclear else o.interior_threshold,
                maxima_smooth_px=o.maxima_smooth_px,
                interior_smooth_px=o.interior_smooth_px,
                radius_px=o.radius_px,
                min_object_px=o.min_object_px,
                max_hole_px=o.max_hole_px,
            )
            found.append(processing.deep_watershed(*maps[compartment], settings))
        stack = processing.resize_output(np.stack(found, axis=-1), shape)
        return {c: stack[..., i] for i, c in enumerate(wanted)}

    def _assemble(self, labels: dict[str, np.ndarray]) -> Segmentation:
        if "whole-cell" not in labels:
            nuclei = relabel_consecutive(labels["nuclear"])
            return Segmentation(cells=nuclei, nuclei=nuclei)
        cells = relabel_consecutive(labels["whole-cell"])
        if "nuclear" not in labels:
            return Segmentation(cells=cells, nuclei=None)
        return Segmentation(cells=cells, nuclei=link_nuclei(cells, labels["nuclear"]))

    def staged(self) -> bool:
        """Staged on the own route; DeepCell's application runs all three stages in one call."""
        return not self._use_deepcell()

    def segment(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> Segmentation:
        """Segment one tile; see :class:`Segmenter` and the module notes."""
        if not self._use_deepcell():
            return super().segment(nuclear, membrane, context)
        _ = self.model  # loading the model builds the DeepCell application used below
        return self._segment_deepcell(_stack(nuclear, membrane), context)

    def _segment_deepcell(self, image: np.ndarray, context: SlideContext) -> Segmentation:
        o = self.options
        kwargs = {
            "maxima_smooth": o.maxima_smooth_px,
            "interior_smooth": o.interior_smooth_px,
            "radius": o.radius_px,
            "small_objects_threshold": o.min_object_px,
            "fill_holes_threshold": o.max_hole_px,
        }
        result = self._app.predict(
            image[None],
            image_mpp=context.pixel_size_um,
            compartment=o.compartment,
            batch_size=o.batch_size,
            postprocess_kwargs_whole_cell={
                **kwargs,
                "maxima_threshold": o.maxima_threshold,
                "interior_threshold": o.interior_threshold,
            },
            postprocess_kwargs_nuclear={
                **kwargs,
                "maxima_threshold": o.nuclear_maxima_threshold,
                "interior_threshold": o.nuclear_interior_threshold,
            },
        )[0]
        names = ["whole-cell", "nuclear"] if o.compartment == "both" else [o.compartment]
        return self._assemble(
            {n: relabel_consecutive(result[..., i].astype(np.int64)) for i, n in enumerate(names)}
        )


def _stack(nuclear: np.ndarray, membrane: np.ndarray | None) -> np.ndarray:
    """Mesmer's ``(Y, X, 2)`` input (nuclear, membrane); a missing membrane is zero."""
    if membrane is None:
        membrane = np.zeros_like(nuclear)
    return np.stack([nuclear, membrane], axis=-1).astype(np.float32)
