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

Stages (Cellpose 3): ``prepare`` runs ``CellposeModel.eval``'s own input
steps (channel conversion, optional normalisation, rescale to the model's
diameter, padding, 224 px tiles with 10 % overlap), ``predict`` runs only
the network on batches of those tiles (which may mix tiles of the slide) and
``postprocess`` averages the tiles, resizes back and runs the flow dynamics
on the CPU; the labels equal ``eval``'s on the CPU. (On a GPU ``eval`` runs
the dynamics on the GPU, so its labels may differ from the staged ones in
rare pixels.) Cellpose 4 runs through its one-call ``eval``.

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
from tiled_seg.labels import relabel_consecutive
from tiled_seg.segment.backends._instances import link_nuclei
from tiled_seg.segment.backends.base import (
    BackendOptions,
    NetworkOutputs,
    PreparedTile,
    Segmentation,
    Segmenter,
    SlideContext,
)

__all__ = ["CellposeOptions", "CellposeSegmenter", "cellpose_major_version"]


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


class CellposeSegmenter(Segmenter[CellposeOptions]):
    """Whole cells (and nuclei) from Cellpose."""

    name: ClassVar[str] = "cellpose"
    Options: ClassVar[type[BackendOptions]] = CellposeOptions
    uses_gpu: ClassVar[bool] = True

    def __init__(self, options: CellposeOptions | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._diam_means: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _use_gpu(self) -> bool:
        import torch

        available = torch.cuda.is_available()
        if self.options.gpu is True and not available:
            raise BackendError("gpu=true but torch sees no CUDA GPU; set gpu to auto or false.")
        return available and self.options.gpu is not False

    def _model_names(self) -> dict[str, str]:
        o, major = self.options, cellpose_major_version()
        cell = o.pretrained_model or ("cpsam" if major >= 4 else "cyto3")
        nuclear = o.nuclear_model or (cell if major >= 4 else "nuclei")
        wanted = {"whole-cell": {"cell": cell}, "nuclear": {"nuclear": nuclear}}
        return wanted.get(o.compartment, {"cell": cell, "nuclear": nuclear})

    def check_model(self) -> None:
        """Every weights file this compartment needs must be local (none is downloaded)."""
        for name in self._model_names().values():
            _resolve(name)

    def load_model(self) -> dict[str, Any]:
        """The Cellpose models this compartment needs, by network (``cell``, ``nuclear``)."""
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
        return built

    def _eval(self, model: Any, image: np.ndarray, diameter_px: float, channels: list[int]) -> np.ndarray:
        o = self.options
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

    def staged(self) -> bool:
        """Cellpose 3 runs in three stages; Cellpose 4 through its one-call ``eval``."""
        return cellpose_major_version() < 4

    def _roles(self) -> list[tuple[str, list[int], float]]:
        """(network, Cellpose 3 channels, diameter in um) of each model this compartment runs."""
        o = self.options
        wanted = self._model_names()
        roles = [("cell", [1, 2], o.cell_diameter_um), ("nuclear", [2, 0], o.nucleus_diameter_um)]
        return [role for role in roles if role[0] in wanted]

    def _diam_mean(self, role: str) -> Any:
        """The model's training diameter (px), as Cellpose 3 sets it, without building the network."""
        with self._lock:
            if role not in self._diam_means:
                target, builtin = _resolve(self._model_names()[role])
                value: Any
                if builtin:
                    value = 17.0 if target == "nuclei" else 30.0
                elif target.endswith("nucleitorch_0"):
                    value = 17.0
                else:
                    import torch

                    state = torch.load(target, map_location="cpu", weights_only=True)
                    value = state["diam_mean"].cpu().numpy()[0]
                self._diam_means[role] = value
        return self._diam_means[role]

    def prepare(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> PreparedTile:
        """Cellpose 3's input steps of ``CellposeModel.eval``: channels, rescale, pad, 224 px tiles."""
        from cellpose import transforms
        from cellpose.models import normalize_default

        o = self.options
        image = _stack(nuclear, membrane)
        windows: dict[str, np.ndarray] = {}
        state: dict[str, Any] = {}
        for role, channels, diameter_um in self._roles():
            x = transforms.convert_image(image, channels, channel_axis=-1, nchan=2)[np.newaxis]
            if o.normalize == "tile":
                x = transforms.normalize_img(x, **{**normalize_default, "normalize": True})
            rescale = self._diam_mean(role) / (diameter_um / context.pixel_size_um)
            height, width = x.shape[1:3]
            rsz = [rescale, rescale] if rescale != 1.0 else None
            resized = (int(height * rescale), int(width * rescale)) if rsz else (height, width)
            ypad1, ypad2, xpad1, xpad2 = transforms.get_pad_yx(*resized)
            tile = transforms.resize_image(x[0], rsz=rsz) if rsz else x[0].copy()
            tile = np.pad(tile.transpose(2, 0, 1), [[0, 0], [ypad1, ypad2], [xpad1, xpad2]])
            tiles, ysub, xsub, ly, lx = transforms.make_tiles(tile, bsize=_BSIZE, augment=False,
                                                             tile_overlap=_TILE_OVERLAP)
            windows[role] = tiles.reshape(-1, *tiles.shape[-3:]).astype(np.float32)
            state[role] = dict(ysub=ysub, xsub=xsub, size=(ly, lx), padded=tile.shape[1:],
                               pads=(ypad1, ypad2, xpad1, xpad2), rescale=rescale, shape=(height, width))
        return PreparedTile(windows, state)

    def predict(self, network: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cellpose's network on ``(N, 2, 224, 224)`` tiles: flows and cell probability, styles."""
        from cellpose.core import _forward

        return tuple(_forward(self.model[network].net, batch))

    def postprocess(
        self, prepared: PreparedTile, outputs: NetworkOutputs, context: SlideContext
    ) -> Segmentation:
        """Cellpose 3's output steps: average the tiles, back to the tile's size, flow dynamics (CPU)."""
        import torch
        from cellpose import dynamics, transforms

        o = self.options
        masks: dict[str, np.ndarray] = {}
        for role, _, _ in self._roles():
            st = prepared.state[role]
            averaged = transforms.average_tiles(outputs[role][0], st["ysub"], st["xsub"], *st["size"])
            ypad1, ypad2, xpad1, xpad2 = st["pads"]
            padded_y, padded_x = st["padded"]
            flows = averaged[:, :padded_y, :padded_x][:, ypad1 : padded_y - ypad2, xpad1 : padded_x - xpad2]
            flows = flows.transpose(1, 2, 0)[np.newaxis]
            if st["rescale"] != 1.0:
                flows = transforms.resize_image(flows, *st["shape"])
            found = dynamics.resize_and_compute_masks(
                flows[..., :2].transpose((3, 0, 1, 2))[:, 0], flows[0, ..., 2],
                niter=1 / st["rescale"] * 200, cellprob_threshold=o.cellprob_threshold,
                flow_threshold=o.flow_threshold, interp=True, resize=None,
                min_size=o.min_size_px, max_size_fraction=0.4, device=torch.device("cpu"),
            )
            masks[role] = relabel_consecutive(np.asarray(found).squeeze())
        return _assemble(masks.get("cell"), masks.get("nuclear"))

    def segment(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> Segmentation:
        """Segment one tile; see :class:`Segmenter` and the module notes."""
        if self.staged():
            return super().segment(nuclear, membrane, context)
        return self.segment_one_call(nuclear, membrane, context)

    def segment_one_call(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> Segmentation:
        """Segment one tile with Cellpose's own ``eval`` (network and dynamics in one call)."""
        o = self.options
        models = self.model
        image = _stack(nuclear, membrane)
        px = context.pixel_size_um
        cells = nuclei = None
        if "cell" in models:
            cells = self._eval(models["cell"], image, o.cell_diameter_um / px, [1, 2])
        if "nuclear" in models:
            nuclear_image = image if cellpose_major_version() < 4 else image[..., 1:]
            nuclei = self._eval(models["nuclear"], nuclear_image, o.nucleus_diameter_um / px, [2, 0])
        return _assemble(cells, nuclei)


#: Cellpose 3's network tile side (px) and tile overlap (fraction), its ``eval`` defaults.
_BSIZE = 224
_TILE_OVERLAP = 0.1


def _stack(nuclear: np.ndarray, membrane: np.ndarray | None) -> np.ndarray:
    """The channels-last ``(membrane, nuclear)`` tile; a missing membrane is zero."""
    if membrane is None:
        membrane = np.zeros_like(nuclear)
    return np.stack([membrane, nuclear], axis=-1).astype(np.float32)


def _assemble(cells: np.ndarray | None, nuclei: np.ndarray | None) -> Segmentation:
    if cells is None:
        return Segmentation(cells=cast(np.ndarray, nuclei), nuclei=nuclei)
    if nuclei is None:
        return Segmentation(cells=cells, nuclei=None)
    return Segmentation(cells=cells, nuclei=link_nuclei(cells, nuclei))
