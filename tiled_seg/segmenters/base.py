"""The one small interface every segmentation backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = ["SlideContext", "Segmentation", "Segmenter", "BackendOptions"]


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


class BackendOptions(BaseModel):
    """Base of every backend's options; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Segmenter(ABC):
    """A segmentation backend.

    Subclasses set ``name`` and ``Options`` (a :class:`BackendOptions`), and
    implement :meth:`segment`. Heavy libraries are imported inside methods so
    the core installs without TensorFlow or PyTorch. Instances are created
    once per worker process and reused for every tile (see ``registry``).
    """

    name: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: Whether the backend benefits from a GPU worker.
    uses_gpu: ClassVar[bool] = False

    def __init__(self, options: BackendOptions | dict[str, Any] | None = None) -> None:
        if not isinstance(options, BackendOptions):
            options = self.Options(**(options or {}))
        self.options = options

    @property
    def max_cell_diameter_um(self) -> float:
        """Largest cell diameter (um) this backend produces; sets an auto halo."""
        return float(getattr(self.options, "max_cell_diameter_um", 30.0))

    def check_model(self) -> None:
        """Raise :class:`~tiled_seg.errors.BackendError` when the model cannot be found.

        Called once before a run starts any work, so a missing model is
        reported in seconds; it locates the weights without loading them.
        Backends without weights have nothing to check.
        """

    @abstractmethod
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
