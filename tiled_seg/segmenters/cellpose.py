"""Cellpose (3.1: ``cyto3``, ``nuclei``; 4: ``cpsam``) as a segmentation backend.

Weights come from a built-in model name found in Cellpose's cache
(``~/.cellpose/models`` or ``$CELLPOSE_LOCAL_MODELS_PATH``) or from a local
file (option ``pretrained_model``). Nothing is downloaded: a name whose file
is not in the cache is a :class:`~tiled_seg.errors.BackendError` saying where
to put it.

Channels: the tile is stacked channels-last as ``(membrane, nuclear)``.
Cellpose 3 is told ``channels=[1, 2]`` (1-based: segment channel 1 = membrane,
nuclear channel 2), the convention its ``cyto*`` models were trained with;
the ``nuclei`` model gets ``channels=[2, 0]`` (segment the nuclear channel
alone). Cellpose 4 takes the image channels-last with no ``channels``
argument; the installed major version decides which call is made. A tile
without a membrane image gets a zero membrane channel.

The diameter in px is ``cell_diameter_um / context.pixel_size_um`` (and
``nucleus_diameter_um`` for the nuclear model). Cellpose's own per-image
percentile normalisation is switched off by default (``normalize="slide"``):
the input is already 0-1 with slide-wide percentiles, which is the range
Cellpose's normalisation produces, so every tile sees the same mapping and no
seam appears. ``normalize="tile"`` restores Cellpose's per-tile behaviour.

Nuclei: with ``compartment="both"`` a second model (``nuclear_model``, default
``nuclei``; for Cellpose 4 the same ``cpsam`` model on the nuclear channel)
segments nuclei, which are linked to cells by maximum overlap.

Only Cellpose 3.1 is tested here (random weights, CPU); the Cellpose 4 path
follows its documented API but has not been run.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field

from tiled_seg.errors import BackendError
from tiled_seg.segmenters._instances import link_nuclei, relabel_consecutive
from tiled_seg.segmenters.base import BackendOptions, Segmentation, Segmenter, SlideContext

__all__ = ["CellposeOptions", "CellposeSegmenter", "cellpose_major_version", "model_loads"]

_loads = 0
_loads_lock = threading.Lock()


class CellposeOptions(BackendOptions):
    """Options of the ``cellpose`` backend; sizes in um."""

    #: Built-in model name (cyto3, cyto2, nuclei, cpsam, ...) or a weights file;
    #: None picks cyto3 (Cellpose 3) or cpsam (Cellpose 4).
    pretrained_model: str | None = None
    #: Model for nuclei when ``compartment`` needs them: a name or a file;
    #: None picks nuclei (Cellpose 3) or the cell model (Cellpose 4).
    nuclear_model: str | None = None
    compartment: Literal["whole-cell", "nuclear", "both"] = "both"
    #: Typical cell diameter (um), converted to px with the pixel size.
    cell_diameter_um: float = Field(15.0, gt=0)
    #: Typical nucleus diameter (um).
    nucleus_diameter_um: float = Field(8.0, gt=0)
    #: "slide": no per-tile renormalisation (input is slide-wide 0-1);
    #: "tile": Cellpose's per-image 1st-99th percentile normalisation.
    normalize: Literal["slide", "tile"] = "slide"
    flow_threshold: float = Field(0.4, ge=0)
    cellprob_threshold: float = 0.0
    #: Masks smaller than this (px) are dropped by Cellpose.
    min_size_px: int = Field(15, ge=0)
    #: 224-px patches per network call.
    batch_size: int = Field(8, gt=0)
    #: "auto": GPU when torch sees one; true: require it; false: CPU.
    gpu: Literal["auto"] | bool = "auto"
    #: Largest cell diameter (um); sets the pipeline's automatic halo.
    max_cell_diameter_um: float = Field(30.0, gt=0)


def cellpose_major_version() -> int:
    """Major version of the installed Cellpose (BackendError when missing)."""
    try:
        from importlib.metadata import version

        return int(version("cellpose").split(".")[0])
    except Exception as error:  # PackageNotFoundError or an odd version string
        raise BackendError(
            "the cellpose backend needs Cellpose; install it with "
            "`pip install 'tiled-seg[cellpose]'`."
        ) from error


def model_loads() -> int:
    """How many Cellpose networks this process has built (for tests)."""
    return _loads


def _cache_dir() -> Path:
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def _builtin_file(name: str) -> str:
    """Cellpose's cache file name for a built-in model name."""
    return f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name


def _resolve(name_or_path: str) -> tuple[str, bool]:
    """(what to hand Cellpose, whether it is a built-in name) without downloading."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return str(path), False
    cached = _cache_dir() / _builtin_file(name_or_path)
    if os.sep not in name_or_path and cached.is_file():
        return name_or_path, True
    raise BackendError(
        f"Cellpose weights {name_or_path!r} not found: not a file, and not in Cellpose's "
        f"cache as {cached}. Cellpose cannot download here; copy the weights file there "
        "(or set CELLPOSE_LOCAL_MODELS_PATH to the folder holding it), or set the "
        "backend option `pretrained_model` to a local weights file."
    )


class CellposeSegmenter(Segmenter):
    """Whole cells (and nuclei) from Cellpose."""

    name: ClassVar[str] = "cellpose"
    Options: ClassVar[type[BackendOptions]] = CellposeOptions
    uses_gpu: ClassVar[bool] = True

    def __init__(self, options: BackendOptions | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def _options(self) -> CellposeOptions:
        return cast(CellposeOptions, self.options)

    def _use_gpu(self) -> bool:
        import torch

        available = torch.cuda.is_available()
        if self._options.gpu is True and not available:
            raise BackendError("gpu=true but torch sees no CUDA GPU; set gpu to auto or false.")
        return available and self._options.gpu is not False

    def _model_names(self) -> dict[str, str]:
        o, major = self._options, cellpose_major_version()
        cell = o.pretrained_model or ("cpsam" if major >= 4 else "cyto3")
        nuclear = o.nuclear_model or (cell if major >= 4 else "nuclei")
        wanted = {"whole-cell": {"cell": cell}, "nuclear": {"nuclear": nuclear}}
        return wanted.get(o.compartment, {"cell": cell, "nuclear": nuclear})

    def check_model(self) -> None:
        """Every weights file this compartment needs must be local (none is downloaded)."""
        for name in self._model_names().values():
            _resolve(name)

    def load(self) -> dict[str, Any]:
        """The Cellpose models this compartment needs, built once per instance."""
        global _loads
        with self._lock:
            if not self._models:
                try:
                    from cellpose import models
                except ImportError as error:
                    raise BackendError(
                        f"the cellpose backend needs Cellpose and PyTorch ({error.name} is "
                        "missing); install them with `pip install 'tiled-seg[cellpose]'`."
                    ) from error
                gpu, built = self._use_gpu(), {}
                resolved = {role: _resolve(name) for role, name in self._model_names().items()}
                for role, (target, builtin) in resolved.items():
                    if cellpose_major_version() >= 4:
                        built[role] = models.CellposeModel(gpu=gpu, pretrained_model=target)
                    else:
                        # MKLDNN re-converts the network on every eval call (seconds
                        # per tile on CPU); plain PyTorch kernels are faster here.
                        key = "model_type" if builtin else "pretrained_model"
                        built[role] = models.CellposeModel(gpu=gpu, mkldnn=False, **{key: target})
                    with _loads_lock:
                        _loads += 1
                self._models = built
        return self._models

    def _eval(self, model: Any, image: np.ndarray, diameter_px: float, channels: list[int]) -> np.ndarray:
        o = self._options
        normalize: dict[str, Any] = {"normalize": o.normalize == "tile"}
        kwargs: dict[str, Any] = dict(
            batch_size=o.batch_size,
            diameter=diameter_px,
            normalize=normalize,
            flow_threshold=o.flow_threshold,
            cellprob_threshold=o.cellprob_threshold,
            min_size=o.min_size_px,
            channel_axis=-1,
        )
        if cellpose_major_version() >= 4:
            # Cellpose 4 reads up to three channels in the given order; no `channels`.
            masks = model.eval(image, **kwargs)[0]
        else:
            masks = model.eval(image, channels=channels, **kwargs)[0]
        return relabel_consecutive(np.asarray(masks))

    def segment(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> Segmentation:
        """Segment one tile; see :class:`Segmenter` and the module notes."""
        o = self._options
        models = self.load()
        if membrane is None:
            membrane = np.zeros_like(nuclear)
        image = np.stack([membrane, nuclear], axis=-1).astype(np.float32)
        px = context.pixel_size_um
        cells = nuclei = None
        if "cell" in models:
            cells = self._eval(models["cell"], image, o.cell_diameter_um / px, [1, 2])
        if "nuclear" in models:
            nuclear_image = image if cellpose_major_version() < 4 else image[..., 1:]
            nuclei = self._eval(models["nuclear"], nuclear_image, o.nucleus_diameter_um / px, [2, 0])
        if cells is None:
            return Segmentation(cells=cast(np.ndarray, nuclei), nuclei=nuclei)
        if nuclei is None:
            return Segmentation(cells=cells, nuclei=None)
        return Segmentation(cells=cells, nuclei=link_nuclei(cells, nuclei))
