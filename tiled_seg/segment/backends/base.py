"""The one small interface every segmentation backend implements."""

from __future__ import annotations

import math
import threading
from abc import ABC
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Sequence, TypeVar, cast

import numpy as np
from pydantic import BaseModel, ConfigDict

from tiled_seg.errors import BackendError

__all__ = [
    "SlideContext",
    "Segmentation",
    "PreparedTile",
    "NetworkOutputs",
    "Segmenter",
    "BackendOptions",
    "predict_tiles",
]


@dataclass(frozen=True)
class SlideContext:
    """Slide-wide facts handed to every tile, identical for all tiles.

    Attributes
    ----------
    pixel_size_um : float
        Size of one pixel in um.
    nuclear_threshold : float
        Slide-wide Otsu threshold of the normalised nuclear image (0-1 units).
    membrane_threshold : float
        Slide-wide Otsu threshold of the normalised membrane image (0-1 units).
    """

    pixel_size_um: float
    nuclear_threshold: float = 0.5
    membrane_threshold: float = 0.5


@dataclass(frozen=True)
class Segmentation:
    """Labels of one tile.

    ``cells`` and ``nuclei`` are ``(Y, X)`` int32 arrays, 0 for background.
    Where ``nuclei`` is given, nucleus ``k`` lies inside cell ``k`` (linked by
    id); backends whose nuclei come out independently relabel them by maximum
    overlap before returning.
    """

    cells: np.ndarray
    nuclei: np.ndarray | None = None


@dataclass(frozen=True)
class PreparedTile:
    """One tile after the ``prepare`` stage.

    Attributes
    ----------
    windows : dict of str to ndarray
        Per network of the backend (e.g. ``"cell"``, ``"nuclear"``), its input
        windows ``(N, ...)`` float32, ready for :meth:`Segmenter.predict`;
        empty for a backend without a predict stage.
    state : dict
        What ``postprocess`` needs besides the network outputs (shapes,
        window layouts, the inputs of a one-call backend).
    """

    windows: dict[str, np.ndarray]
    state: dict[str, Any]

    @property
    def n_windows(self) -> int:
        """Windows over all networks."""
        return sum(len(w) for w in self.windows.values())


#: Network outputs of one tile: per network, the outputs of
#: :meth:`Segmenter.predict`, each ``(N, ...)`` with one entry per window.
NetworkOutputs = dict[str, tuple[np.ndarray, ...]]


class BackendOptions(BaseModel):
    """Base of every backend's options; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=BackendOptions)

#: :attr:`Segmenter.model` before :meth:`Segmenter.load_model` ran.
_NOT_LOADED = object()

#: Models loaded in this process, by backend name (see :meth:`Segmenter.model_loads`).
_model_loads: Counter[str] = Counter()
_model_loads_lock = threading.Lock()


class Segmenter(ABC, Generic[OptionsT]):
    """A segmentation backend.

    Subclasses set ``name`` and ``Options`` (a :class:`BackendOptions`) and
    implement either the three stages or only :meth:`segment`:

    * :meth:`prepare` (CPU): the tile's inputs rescaled to the model's pixel
      size, normalised as the model wants and cut into model windows;
    * :meth:`predict` (accelerator): the network on one batch of windows,
      which may come from several tiles;
    * :meth:`postprocess` (CPU): network outputs to labels at the tile's
      pixel size.

    A backend that only implements :meth:`segment` (the watershed, or a
    third-party one-call backend) has no predict stage: the pipeline runs
    its ``segment`` in one CPU task. For a staged backend ``segment`` runs
    the three stages in a row, so both paths give the same labels.

    A backend with weights builds them in :meth:`load_model`; :attr:`model`
    calls it once, on first use, whichever thread asks first. Heavy
    libraries are imported there and in the other methods, so the core
    installs without TensorFlow or PyTorch. Instances are created once per
    worker process and reused for every tile (see ``registry``).

    Subclass ``Segmenter[MyOptions]`` so that ``self.options`` has the type
    of the backend's own options.
    """

    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: Whether the backend benefits from a GPU worker.
    uses_gpu: ClassVar[bool] = False

    def __init__(self, options: OptionsT | dict[str, Any] | None = None) -> None:
        cls = type(self)
        if cls.segment is Segmenter.segment and cls.postprocess is Segmenter.postprocess:
            raise BackendError(
                f"{cls.__name__} implements neither segment nor prepare/predict/postprocess; "
                "implement segment, or the three stages."
            )
        if isinstance(options, BackendOptions):
            checked: BackendOptions = options
        else:
            checked = self.Options(**(options or {}))
        self.options: OptionsT = cast(OptionsT, checked)
        self._model: Any = _NOT_LOADED
        self._model_lock = threading.Lock()

    def load_model(self) -> Any:
        """Build the backend's model (networks, sessions) from its options.

        Called once per instance, by :attr:`model`; backends without weights
        keep this default (None). Raise :class:`BackendError` when the
        weights cannot be loaded.
        """
        return None

    @property
    def model(self) -> Any:
        """The backend's model, loaded on first use and kept (thread-safe)."""
        with self._model_lock:
            if self._model is _NOT_LOADED:
                self._model = self.load_model()
                with _model_loads_lock:
                    _model_loads[type(self).name] += 1
        return self._model

    @classmethod
    def model_loads(cls) -> int:
        """How many times this process has loaded this backend's model (for tests).

        One per instance whose :attr:`model` was used; the registry keeps one
        instance per backend and options in each worker process.
        """
        return _model_loads[cls.name]

    def staged(self) -> bool:
        """Whether this backend runs its network in a separate predict stage.

        True when the class implements :meth:`predict`; a backend may refuse
        for a configuration that only has a one-call route.
        """
        return type(self).predict is not Segmenter.predict

    @property
    def max_cell_diameter_um(self) -> float:
        """Largest cell diameter (um) this backend produces; sets an auto halo."""
        return float(getattr(self.options, "max_cell_diameter_um", 30.0))

    def halo_px(self, pixel_size_um: float) -> int:
        """Automatic halo (px): the largest cell diameter at ``pixel_size_um`` (um/px).

        A backend whose filters read beyond a cell (e.g. pixel features at
        large scales) adds their reach, so a tile still sees every cell of
        its core whole and exactly as the whole slide would.
        """
        return max(1, math.ceil(self.max_cell_diameter_um / pixel_size_um))

    def check_model(self) -> None:
        """Raise :class:`~tiled_seg.errors.BackendError` when the model cannot be found.

        Called once before a run starts any work, so a missing model is
        reported in seconds; it locates the weights without loading them.
        Backends without weights have nothing to check.
        """

    @property
    def predict_batch_size(self) -> int:
        """Windows per :meth:`predict` call (the backend's ``batch_size`` option, else 1)."""
        return int(getattr(self.options, "batch_size", 1))

    def prepare(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> PreparedTile:
        """CPU stage before the network; parameters as in :meth:`segment`.

        The default keeps the inputs for a one-call :meth:`segment`.
        """
        return PreparedTile({}, {"nuclear": nuclear, "membrane": membrane})

    def predict(self, network: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run network ``network`` on a batch of windows ``(N, ...)``.

        Returns the network's outputs, each ``(N, ...)``. Only staged
        backends implement it.
        """
        raise NotImplementedError(f"backend {self.name!r} has no predict stage")

    def postprocess(
        self, prepared: PreparedTile, outputs: NetworkOutputs, context: SlideContext
    ) -> Segmentation:
        """CPU stage after the network: labels of the tile ``prepared`` came from.

        The default runs the one-call :meth:`segment` on the kept inputs.
        """
        return self.segment(prepared.state["nuclear"], prepared.state["membrane"], context)

    def segment(
        self,
        nuclear: np.ndarray,
        membrane: np.ndarray | None,
        context: SlideContext,
    ) -> Segmentation:
        """Segment one tile.

        Parameters
        ----------
        nuclear : ndarray, shape (Y, X), float32
            Nuclear input, normalised with slide-wide statistics to 0-1.
        membrane : ndarray, shape (Y, X), float32, or None
            Membrane input (mean of the rescaled membrane markers), or None
            when the panel names no membrane channel.
        context : SlideContext
            Pixel size and slide-wide thresholds.

        Returns
        -------
        Segmentation
        """
        prepared = self.prepare(nuclear, membrane, context)
        (outputs,) = predict_tiles(self, [prepared])
        return self.postprocess(prepared, outputs, context)


def predict_tiles(segmenter: Segmenter, prepared: Sequence[PreparedTile]) -> list[NetworkOutputs]:
    """The predict stage of several tiles, batched across them.

    Per network, the windows of all tiles are concatenated and run in
    batches of ``segmenter.predict_batch_size``; the outputs are split back
    per tile.

    Parameters
    ----------
    segmenter : Segmenter
        A backend with a predict stage (or any backend, for tiles without windows).
    prepared : sequence of PreparedTile
        Tiles from :meth:`Segmenter.prepare`.

    Returns
    -------
    list of NetworkOutputs
        One per tile, in the order given.
    """
    results: list[NetworkOutputs] = [{} for _ in prepared]
    networks = sorted({name for tile in prepared for name in tile.windows})
    for network in networks:
        owners = [i for i, tile in enumerate(prepared) if network in tile.windows]
        windows = np.concatenate([prepared[i].windows[network] for i in owners])
        batch = max(segmenter.predict_batch_size, 1)
        parts = [segmenter.predict(network, windows[j : j + batch]) for j in range(0, len(windows), batch)]
        outputs = [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]
        start = 0
        for i in owners:
            stop = start + len(prepared[i].windows[network])
            results[i][network] = tuple(out[start:stop] for out in outputs)
            start = stop
    return results
