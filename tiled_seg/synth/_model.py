"""The parameters every block needs to regenerate its cells and pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tiled_seg.synth._panel import _TYPES, _Marker

#: Side of a generation cell (um); at most one cell centre per generation cell.
GRID_UM = 6.5
#: Point-spread blur (um, Gaussian sigma) and its truncation (sigmas).
_PSF_UM = 0.45
_TRUNCATE = 3.0


@dataclass(frozen=True)
class _Model:
    """Everything a block needs to regenerate its cells and pixels."""

    seed: int
    shape: tuple[int, int]
    pixel_size_um: float
    density: float
    spillover: float
    markers: tuple[_Marker, ...]
    grid_px: float = field(init=False)
    thin_ring: int = field(init=False)
    search_ring: int = field(init=False)
    ring_px: tuple[int, int] = field(init=False)
    psf_px: float = field(init=False)
    halo_px: int = field(init=False)

    def __post_init__(self) -> None:
        p = self.pixel_size_um
        grid = GRID_UM / p
        hard = 2 * max(t.hard_core_um for t in _TYPES) / p
        reach = max(t.radius_um[1] * (1 + t.a2[1] + t.a3_max) for t in _TYPES) / p
        inner = max(1, round(1.0 / p))
        psf = _PSF_UM / p
        object.__setattr__(self, "grid_px", grid)
        # Centres m generation cells away are more than (m - 1) * grid px apart.
        object.__setattr__(self, "thin_ring", math.ceil(hard / grid))
        object.__setattr__(self, "search_ring", math.ceil(reach / grid))
        object.__setattr__(self, "ring_px", (inner, 2 * inner))
        object.__setattr__(self, "psf_px", psf)
        object.__setattr__(self, "halo_px", 2 * inner + int(_TRUNCATE * psf + 0.5) + 1)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return math.ceil(self.shape[0] / self.grid_px), math.ceil(self.shape[1] / self.grid_px)
