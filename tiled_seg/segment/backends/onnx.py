"""A bioimage.io model with ONNX weights as a nuclear segmentation backend.

The model is described by its ``bioimageio.yaml`` (format 0.4 or 0.5): option
``model`` (the file or the folder holding it) or the environment variable
``TILED_SEG_ONNX_MODEL``. The description gives the weights, the input axes
and window size, the output halo, and the pre- and postprocessing, which this
backend applies itself (``onnxruntime`` only; no ``bioimageio.core``):

1. the nuclear input (float32, 0-1 with slide-wide statistics) is optionally
   rescaled to the model's pixel size (``model_pixel_size_um``);
2. it is cut into the model's input windows (e.g. 512 x 512), overlapping by
   twice the declared output halo; every pixel is taken from the window whose
   centre is nearest, so window edges never reach the result;
3. the declared preprocessing runs per window. ``zero_mean_unit_variance``
   with per-sample statistics (the usual case) is a per-input normalisation:
   it gives each window its own contrast, which can differ across tile seams.
   With ``normalization="fixed"`` (the default) the backend uses the fixed
   numbers ``input_mean`` / ``input_std`` (in the 0-1 units of the
   slide-wide normalised input) instead, so every window of every tile sees
   the same mapping; ``normalization="model"`` follows the description to the
   letter. ``scale_range`` (per-sample percentiles) is treated the same way:
   the slide-wide 0-1 input already is such a range, so "fixed" leaves it as is;
4. the declared postprocessing runs (``sigmoid`` turns logits into a
   foreground probability);
5. instances come from a distance-transform marker watershed on the
   probability (:func:`tiled_seg.segment.backends._instances.probability_instances`),
   objects under ``min_nucleus_area_um2`` removed.

This is a nuclear-only backend: it returns the nuclei as ``cells`` and the
same array as ``nuclei``; the pipeline's nuclear expansion turns them into
cells.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from tiled_seg.errors import BackendError
from tiled_seg.segment.backends._instances import probability_instances, rescale_image, resize_image
from tiled_seg.segment.backends._windows import assemble_windows, cut_windows
from tiled_seg.segment.backends.base import (
    BackendOptions,
    NetworkOutputs,
    PreparedTile,
    Segmentation,
    Segmenter,
    SlideContext,
    predict_tiles,
)

__all__ = [
    "OnnxOptions",
    "OnnxSegmenter",
    "ModelDescription",
    "read_description",
]

ENV_MODEL = "TILED_SEG_ONNX_MODEL"
_DESCRIPTION_NAMES = ("bioimageio.yaml", "rdf.yaml")


class OnnxOptions(BackendOptions):
    """Options of the ``onnx`` backend; sizes in um, converted with the pixel size."""

    #: Path to the model's ``bioimageio.yaml`` (or its folder); None reads
    #: ``$TILED_SEG_ONNX_MODEL``.
    model: str | None = None
    #: "fixed": per-sample statistics replaced by ``input_mean`` / ``input_std``
    #: (seam-free); "model": the description's own per-window statistics.
    normalization: Literal["fixed", "model"] = "fixed"
    #: Mean (0-1 input units) used by ``zero_mean_unit_variance`` when fixed.
    input_mean: float = 0.15
    #: Standard deviation (0-1 input units) used when fixed.
    input_std: float = Field(0.25, gt=0)
    #: Pixel size (um/px) the model expects; None runs at the slide's pixel size.
    model_pixel_size_um: float | None = Field(None, gt=0)
    #: Foreground probability threshold.
    threshold: float = Field(0.5, gt=0, lt=1)
    #: Typical nucleus diameter (um): peak search disk of the watershed.
    nucleus_diameter_um: float = Field(7.0, gt=0)
    #: Minimum peak distance as a fraction of ``nucleus_diameter_um``.
    peak_separation: float = Field(0.5, gt=0, le=2)
    #: Nuclei smaller than this (um^2) are removed.
    min_nucleus_area_um2: float = Field(8.0, ge=0)
    #: Gaussian sigma (um) applied to the probability before the watershed.
    smoothing_um: float = Field(0.0, ge=0)
    #: Largest object diameter (um); sets the pipeline's automatic halo.
    max_cell_diameter_um: float = Field(15.0, gt=0)
    #: Window side (px) for models whose input size is parameterised.
    window_px: int = Field(512, gt=0)
    #: Overlap margin (px) per window edge; None uses the described output halo.
    margin_px: int | None = Field(None, ge=0)
    #: Output channel holding the foreground.
    output_channel: int = Field(0, ge=0)
    #: Windows per inference call (only for models with a free batch axis).
    batch_size: int = Field(1, gt=0)
    #: onnxruntime execution providers; None: CUDA when available, else CPU.
    providers: list[str] | None = None
    #: CPU threads of one inference call; None: onnxruntime's default (all cores).
    intra_op_threads: int | None = Field(None, gt=0)
    #: Check the weights' sha256 against the description when loading.
    verify_sha256: bool = True


@dataclass(frozen=True)
class ModelDescription:
    """What the backend needs from a bioimage.io model description.

    Attributes
    ----------
    path : Path
        The description file.
    weights : Path
        The ONNX weights file.
    weights_sha256 : str or None
        Declared checksum of the weights.
    input_axes, output_axes : str
        Axis letters in tensor order, from ``b``, ``c``, ``y``, ``x``.
    input_channels : int
        Number of input channels.
    window_px : int or None
        Fixed input side (px), or None when parameterised.
    window_min_px, window_step_px : int
        Smallest side and step of a parameterised input (px).
    halo_px : int
        Output halo (px): pixels at each window edge to discard.
    preprocessing, postprocessing : tuple of (str, dict)
        Operation ids and their keyword arguments, in order.
    """

    path: Path
    weights: Path
    weights_sha256: str | None
    input_axes: str
    output_axes: str
    input_channels: int
    window_px: int | None
    window_min_px: int
    window_step_px: int
    halo_px: int
    preprocessing: tuple[tuple[str, dict[str, Any]], ...]
    postprocessing: tuple[tuple[str, dict[str, Any]], ...]


def _axes_letters(axes: Any) -> tuple[str, list[Any]]:
    """Axis letters and per-axis entries of a 0.4 (string) or 0.5 (list) description."""
    if isinstance(axes, str):
        return axes, [None] * len(axes)
    letters = ""
    for axis in axes:
        kind = axis.get("type")
        if kind == "batch":
            letters += "b"
        elif kind == "channel":
            letters += "c"
        elif kind == "space":
            letters += str(axis.get("id", "x"))
        else:
            raise BackendError(f"unsupported axis type {kind!r} in the model description.")
    return letters, list(axes)


def _operations(entries: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple(
        (str(entry.get("id", entry.get("name"))), dict(entry.get("kwargs") or {}))
        for entry in entries or []
    )


def read_description(path: str | Path) -> ModelDescription:
    """Read a bioimage.io model description (format 0.4 or 0.5).

    Parameters
    ----------
    path : str or Path
        The ``bioimageio.yaml`` / ``rdf.yaml`` file, or the folder holding it.

    Returns
    -------
    ModelDescription

    Raises
    ------
    BackendError
        The file is missing, has no ONNX weights, or describes a layout this
        backend does not run (not one 2D input and output).
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        found = [path / name for name in _DESCRIPTION_NAMES if (path / name).is_file()]
        if not found:
            raise BackendError(
                f"no {' or '.join(_DESCRIPTION_NAMES)} in {path}; unpack a bioimage.io "
                "model there or point the `model` option at its description file."
            )
        path = found[0]
    if not path.is_file():
        raise BackendError(
            f"bioimage.io model description {path} does not exist; download a model "
            "with ONNX weights from bioimage.io, unpack it, and set the `model` option "
            f"or ${ENV_MODEL} to its bioimageio.yaml."
        )
    with open(path) as handle:
        rdf = yaml.safe_load(handle)
    onnx = (rdf.get("weights") or {}).get("onnx")
    if not onnx:
        raise BackendError(
            f"{path} declares no ONNX weights (has: {', '.join(rdf.get('weights') or {})}); "
            "choose a bioimage.io model with `weights: onnx`."
        )
    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(inputs) != 1 or len(outputs) < 1:
        raise BackendError(f"{path}: this backend runs models with one input tensor.")
    in_axes, in_entries = _axes_letters(inputs[0]["axes"])
    out_axes, out_entries = _axes_letters(outputs[0]["axes"])
    if sorted(in_axes) != sorted("bcxy") or sorted(out_axes) != sorted("bcxy"):
        raise BackendError(
            f"{path}: axes {in_axes!r} -> {out_axes!r}; this backend runs 2D models "
            "with batch, channel, y and x axes."
        )
    window, minimum, step = _input_size(inputs[0], in_axes, in_entries)
    channels = _channel_count(inputs[0], in_axes, in_entries)
    return ModelDescription(
        path=path,
        weights=path.parent / str(onnx["source"]),
        weights_sha256=onnx.get("sha256"),
        input_axes=in_axes,
        output_axes=out_axes,
        input_channels=channels,
        window_px=window,
        window_min_px=minimum,
        window_step_px=step,
        halo_px=_halo(outputs[0], out_axes, out_entries),
        preprocessing=_operations(inputs[0].get("preprocessing")),
        postprocessing=_operations(outputs[0].get("postprocessing")),
    )


def _input_size(tensor: dict[str, Any], axes: str, entries: list[Any]) -> tuple[int | None, int, int]:
    """(fixed side, min side, step) of the input's y axis in px."""
    y = axes.index("y")
    if isinstance(tensor.get("shape"), list):  # format 0.4, fixed shape
        return int(tensor["shape"][y]), int(tensor["shape"][y]), 0
    if isinstance(tensor.get("shape"), dict):  # format 0.4, parameterised
        shape = tensor["shape"]
        return None, int(shape["min"][y]), int(shape["step"][y])
    size = entries[y].get("size")
    if isinstance(size, int):
        return size, size, 0
    if isinstance(size, dict) and "min" in size:
        return None, int(size["min"]), int(size.get("step", 0))
    raise BackendError(f"cannot read the input size of y from {size!r}.")


def _channel_count(tensor: dict[str, Any], axes: str, entries: list[Any]) -> int:
    c = axes.index("c")
    if isinstance(tensor.get("shape"), list):
        return int(tensor["shape"][c])
    if isinstance(tensor.get("shape"), dict):
        return int(tensor["shape"]["min"][c])
    return len(entries[c].get("channel_names") or [None])


def _halo(tensor: dict[str, Any], axes: str, entries: list[Any]) -> int:
    if isinstance(tensor.get("halo"), list):
        return int(max(tensor["halo"][axes.index(a)] for a in "yx"))
    return int(max((entries[axes.index(a)] or {}).get("halo", 0) for a in "yx"))


def _resolve_window(description: ModelDescription, requested_px: int) -> int:
    if description.window_px is not None:
        return description.window_px
    step = max(description.window_step_px, 1)
    extra = max(requested_px - description.window_min_px, 0)
    return description.window_min_px + (extra // step) * step


def _zmuv(window: np.ndarray, kwargs: dict[str, Any], options: OnnxOptions) -> np.ndarray:
    eps = float(kwargs.get("eps", 1e-6))
    mode = kwargs.get("mode", "per_sample")
    if mode == "fixed" or "mean" in kwargs:
        mean, std = float(np.mean(kwargs["mean"])), float(np.mean(kwargs["std"]))
    elif options.normalization == "fixed":
        mean, std = options.input_mean, options.input_std
    else:
        mean, std = float(window.mean()), float(window.std())
    return (window - mean) / (std + eps)


def _preprocess(window: np.ndarray, description: ModelDescription, options: OnnxOptions) -> np.ndarray:
    """Apply the declared preprocessing to one ``(Y, X, C)`` window."""
    for op, kwargs in description.preprocessing:
        if op == "ensure_dtype":
            continue
        if op in ("zero_mean_unit_variance", "fixed_zero_mean_unit_variance"):
            window = _zmuv(window, kwargs, options)
        elif op == "scale_linear":
            window = window * float(np.mean(kwargs.get("gain", 1.0))) + float(
                np.mean(kwargs.get("offset", 0.0))
            )
        elif op == "scale_range":
            if options.normalization == "model":
                low = np.percentile(window, float(kwargs.get("min_percentile", 0.0)))
                high = np.percentile(window, float(kwargs.get("max_percentile", 100.0)))
                window = (window - low) / (high - low + float(kwargs.get("eps", 1e-6)))
        elif op == "clip":
            window = np.clip(window, kwargs.get("min"), kwargs.get("max"))
        else:
            raise BackendError(
                f"preprocessing {op!r} of {description.path} is not supported by the onnx backend."
            )
    return window.astype(np.float32, copy=False)


def _postprocess(output: np.ndarray, description: ModelDescription) -> np.ndarray:
    for op, kwargs in description.postprocessing:
        if op == "sigmoid":
            output = 1.0 / (1.0 + np.exp(-np.clip(output, -80.0, 80.0)))
        elif op == "clip":
            output = np.clip(output, kwargs.get("min"), kwargs.get("max"))
        elif op != "ensure_dtype":
            raise BackendError(
                f"postprocessing {op!r} of {description.path} is not supported by the onnx backend."
            )
    return output.astype(np.float32, copy=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxSegmenter(Segmenter[OnnxOptions]):
    """Nuclei from a bioimage.io ONNX foreground model plus a marker watershed."""

    name: ClassVar[str] = "onnx"
    Options: ClassVar[type[BackendOptions]] = OnnxOptions

    def __init__(self, options: OnnxOptions | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._description: ModelDescription | None = None
        self._lock = threading.Lock()

    def _model_path(self) -> Path:
        options = self.options
        given = options.model or os.environ.get(ENV_MODEL)
        if not given:
            raise BackendError(
                "the onnx backend needs a bioimage.io model: set the backend option "
                f"`model` or ${ENV_MODEL} to the model's bioimageio.yaml (download a model "
                "with ONNX weights from bioimage.io and unpack it)."
            )
        return Path(given).expanduser()

    def check_model(self) -> None:
        """The model description must exist (it is read, the weights are not loaded)."""
        self.description()

    def description(self) -> ModelDescription:
        """The model description, read once per instance (no session is created)."""
        with self._lock:
            if self._description is None:
                self._description = read_description(self._model_path())
        return self._description

    def load_model(self) -> tuple[Any, ModelDescription]:
        """The ONNX session and the model description."""
        options = self.options
        description = self.description()
        if not description.weights.is_file():
            raise BackendError(
                f"ONNX weights {description.weights} named by {description.path} "
                "are missing; unpack the whole bioimage.io model package."
            )
        if options.verify_sha256 and description.weights_sha256:
            if _sha256(description.weights) != description.weights_sha256:
                raise BackendError(
                    f"{description.weights} does not match the sha256 in "
                    f"{description.path}; download the model again."
                )
        import onnxruntime

        available = onnxruntime.get_available_providers()
        providers = options.providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        settings = onnxruntime.SessionOptions()
        if options.intra_op_threads:
            settings.intra_op_num_threads = options.intra_op_threads
        session = onnxruntime.InferenceSession(
            str(description.weights), sess_options=settings, providers=providers
        )
        return session, description


    @property
    def predict_batch_size(self) -> int:
        """Windows per call: 1 for a model whose batch axis is fixed at 1."""
        session, _ = self.model
        fixed = session.get_inputs()[0].shape[0] == 1
        return 1 if fixed else self.options.batch_size

    def prepare(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> PreparedTile:
        """Rescale to the model's pixel size, cut into windows, apply the declared preprocessing.

        The windows come out in the model's declared axis order.
        """
        options = self.options
        description = self.description()
        factor = (
            context.pixel_size_um / options.model_pixel_size_um
            if options.model_pixel_size_um
            else 1.0
        )
        image = rescale_image(np.asarray(nuclear, np.float32), factor)[..., None]
        if description.input_channels != 1:
            raise BackendError(
                f"{description.path} expects {description.input_channels} input channels; "
                "the onnx backend runs single-channel nuclear models."
            )
        window = _resolve_window(description, options.window_px)
        margin = options.margin_px if options.margin_px is not None else description.halo_px
        windows, layout = cut_windows(image, window, min(margin, (window - 1) // 2))
        prepared = np.stack([_preprocess(w, description, options) for w in windows])
        # (N, Y, X, C) -> the declared input order.
        tensor = np.transpose(prepared, ["byxc".index(a) for a in description.input_axes])
        return PreparedTile(
            {"nuclear": np.ascontiguousarray(tensor)},
            {"layout": layout, "shape": nuclear.shape},
        )

    def predict(self, network: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """The ONNX session on a batch in the model's input order; output as ``(N, Y, X, C)``."""
        session, description = self.model
        result = session.run(None, {session.get_inputs()[0].name: batch})[0]
        return (np.transpose(result, [description.output_axes.index(a) for a in "byxc"]),)

    def postprocess(
        self, prepared: PreparedTile, outputs: NetworkOutputs, context: SlideContext
    ) -> Segmentation:
        """Declared postprocessing, windows assembled, then the marker watershed."""
        options = self.options
        nuclei = probability_instances(
            self._probability(prepared, outputs),
            context,
            threshold=options.threshold,
            nucleus_diameter_um=options.nucleus_diameter_um,
            min_area_um2=options.min_nucleus_area_um2,
            smoothing_um=options.smoothing_um,
            peak_separation=options.peak_separation,
        )
        return Segmentation(cells=nuclei, nuclei=nuclei)

    def probability(self, nuclear: np.ndarray, context: SlideContext) -> np.ndarray:
        """Foreground probability (0-1) of one tile, shape ``(Y, X)``, float32."""
        prepared = self.prepare(nuclear, None, context)
        (outputs,) = predict_tiles(self, [prepared])
        return self._probability(prepared, outputs)

    def _probability(self, prepared: PreparedTile, outputs: NetworkOutputs) -> np.ndarray:
        channel = self.options.output_channel
        (result,) = outputs["nuclear"]
        probability = _postprocess(result[..., channel : channel + 1], self.description())
        assembled = assemble_windows(probability, prepared.state["layout"])[..., 0]
        return resize_image(assembled, prepared.state["shape"])
