"""Synthetic IMC-like slides with ground-truth cells and nuclei.

The slide is generated chunk by chunk, so any size fits in bounded memory and
every pixel has the same value whatever chunk computes it.

How it works
------------
Cell centres come from a grid of generation cells (``GRID_UM`` on a side),
each holding at most one candidate centre. Every random number is a
counter-based hash of ``(seed, stream, row, column)``, so any generation cell
can be regenerated anywhere, cheaply and vectorised. A candidate exists with a
probability given by a smooth low-frequency density field (dense tissue versus
empty stroma); candidates are thinned by a hard core (Matérn type II: a
candidate dies when one with a lower mark lies closer than the sum of their
hard-core radii), so nuclei do not pile up. Cell ids are consecutive from 1 in
raster order of generation cells: a small table of prefix counts (one entry
per generation row and ``_K`` columns) is computed once from hashes alone.

A pixel belongs to its nearest centre (a Voronoi tessellation, so cells touch
in dense regions) if it lies within that cell's own irregular radius; the
pixel holding a centre always belongs to its cell, so every cell has pixels.
The nucleus is an ellipse around the centre, clipped to its cell.

Intensities are expected ion counts per pixel: nuclear markers (DNA with
chromatin texture), membrane markers on a ring a few px thick along the cell
boundary with uneven brightness, cytoplasmic and extracellular markers; an
optional lateral spillover mixes each boundary pixel with its neighbour
cell's signal; a Gaussian point-spread blur; then background, Poisson count
noise and hot pixels. Values are stored as uint16 counts.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from tiled_seg.errors import ChannelError, ConfigError, PixelSizeError
from tiled_seg.io.ngff import NGFFVersion, write_image, write_labels

__all__ = [
    "CELL_TYPES",
    "SynthInfo",
    "channel_names_for",
    "make_slide",
    "synth_arrays",
]

#: Cell types, in the order of ``SynthInfo.cell_type_counts``.
CELL_TYPES = ("tumour", "T", "B", "macrophage", "stroma")
_TUMOUR, _T, _B, _MAC, _STROMA = range(5)

#: Side of a generation cell (um); at most one cell centre per generation cell.
GRID_UM = 6.5
#: Prefix counts are stored every ``_K`` generation columns.
_K = 64
#: Generation rows processed at once when counting cells.
_BAND = 64
#: Point-spread blur (um, Gaussian sigma) and its truncation (sigmas).
_PSF_UM = 0.45
_TRUNCATE = 3.0
#: Fraction of cells whose membrane markers are dim, and by how much.
_DIM_FRACTION = 0.1
_DIM_MEMBRANE = 0.35
#: Hot pixels per pixel and channel.
_HOT_RATE = 5e-5


@dataclass(frozen=True)
class _CellType:
    hard_core_um: float  # half the smallest centre distance to a neighbour
    radius_um: tuple[float, float]  # cell radius range before irregularity
    a2: tuple[float, float]  # elongation (2nd angular harmonic of the radius)
    a3_max: float  # 3rd angular harmonic
    nucleus_radius_um: tuple[float, float]  # equivalent radius of the nucleus
    nucleus_aspect: tuple[float, float]


_TYPES = (
    _CellType(5.2, (7.0, 9.5), (0.0, 0.12), 0.07, (3.4, 4.4), (1.0, 1.4)),
    _CellType(3.5, (5.0, 6.5), (0.0, 0.08), 0.05, (2.8, 3.4), (1.0, 1.2)),
    _CellType(3.5, (5.0, 6.5), (0.0, 0.08), 0.05, (2.8, 3.5), (1.0, 1.2)),
    _CellType(4.6, (7.0, 9.5), (0.0, 0.15), 0.10, (2.9, 3.8), (1.1, 1.6)),
    _CellType(4.0, (5.5, 8.0), (0.2, 0.40), 0.05, (2.6, 3.4), (1.6, 2.4)),
)


@dataclass(frozen=True)
class _Marker:
    """A channel: where it is expressed, by whom, how bright (counts/px).

    ``levels`` maps a cell type to ``(level, lo, hi)``: a cell of that type
    expresses the marker when its uniform draw on ``stream`` lies in
    ``[lo, hi)``; markers sharing a stream thus pick exclusive subsets.
    """

    name: str
    compartment: str  # nuclear, membrane, cytoplasm or extracellular
    levels: dict[int, tuple[float, float, float]]
    stream: str = "all"
    sigma: float = 0.4  # lognormal cell-to-cell variation
    background: float = 0.4
    variation_key: str = ""  # markers with the same key vary together


_ALL = (0.0, 1.0)
_MARKERS = (
    _Marker("DNA1", "nuclear", {t: (32.0, *_ALL) for t in range(5)}, sigma=0.35,
            background=0.8, variation_key="DNA"),
    _Marker("NaKATPase", "membrane",
            {_TUMOUR: (16.0, *_ALL), _T: (9.0, *_ALL), _B: (9.0, *_ALL),
             _MAC: (11.0, *_ALL), _STROMA: (9.0, *_ALL)}, sigma=0.5),
    _Marker("CD3", "membrane", {_T: (14.0, *_ALL)}),
    _Marker("CD20", "membrane", {_B: (14.0, *_ALL)}),
    _Marker("CD68", "cytoplasm", {_MAC: (12.0, *_ALL)}),
    _Marker("PanKeratin", "cytoplasm", {_TUMOUR: (20.0, *_ALL)}, sigma=0.5),
    _Marker("CD45", "membrane", {_T: (12.0, *_ALL), _B: (12.0, *_ALL), _MAC: (8.0, *_ALL)}),
    _Marker("CD44", "membrane",
            {_TUMOUR: (6.0, *_ALL), _T: (8.0, *_ALL), _B: (6.0, *_ALL),
             _MAC: (10.0, *_ALL), _STROMA: (10.0, *_ALL)}, sigma=0.7),
    _Marker("DNA2", "nuclear", {t: (52.0, *_ALL) for t in range(5)}, sigma=0.35,
            background=1.2, variation_key="DNA"),
    _Marker("Vimentin", "cytoplasm", {_STROMA: (14.0, *_ALL), _MAC: (5.0, *_ALL)}),
    _Marker("SMA", "cytoplasm", {_STROMA: (18.0, 0.0, 0.4)}, stream="stroma"),
    _Marker("Ki67", "nuclear", {_TUMOUR: (12.0, 0.0, 0.3), _T: (10.0, 0.0, 0.08),
                                _B: (10.0, 0.0, 0.15)}, stream="prolif", background=0.2),
    _Marker("CD8", "membrane", {_T: (11.0, 0.0, 0.4)}, stream="Tsub"),
    _Marker("CD4", "membrane", {_T: (9.0, 0.4, 1.0), _MAC: (3.0, *_ALL)}, stream="Tsub"),
    _Marker("CD31", "membrane", {_STROMA: (13.0, 0.75, 1.0)}, stream="stroma"),
    _Marker("HLA-DR", "membrane", {_B: (10.0, *_ALL), _MAC: (12.0, *_ALL)}),
    _Marker("FOXP3", "nuclear", {_T: (8.0, 0.4, 0.48)}, stream="Tsub", background=0.2),
    _Marker("CD11c", "membrane", {_MAC: (7.0, 0.0, 0.5)}, stream="macsub"),
    _Marker("Collagen1", "extracellular", {}, background=0.5),
    _Marker("E-Cadherin", "membrane", {_TUMOUR: (12.0, *_ALL)}, sigma=0.5),
    _Marker("GranzymeB", "cytoplasm", {_T: (7.0, 0.0, 0.15)}, stream="Tsub"),
    _Marker("CD163", "membrane", {_MAC: (8.0, 0.2, 1.0)}, stream="macsub"),
)


def _generic_marker(seed: int, index: int) -> _Marker:
    """A made-up marker ``Marker_<index>`` expressed by part of one cell type."""
    u = _uniform(seed, _stream(f"generic{index}"), np.arange(3)[:, None], np.zeros((1, 1), np.int64))
    kind = int(u[0, 0] * 5)
    compartment = ("membrane", "cytoplasm", "nuclear")[int(u[1, 0] * 3)]
    return _Marker(f"Marker_{index}", compartment, {kind: (6.0 + 8.0 * float(u[2, 0]), 0.0, 0.6)},
                   stream=f"generic{index}")


def _markers(seed: int, n_channels: int) -> tuple[_Marker, ...]:
    named = _MARKERS[:n_channels]
    return named + tuple(_generic_marker(seed, i) for i in range(len(named), n_channels))


def channel_names_for(n_channels: int) -> list[str]:
    """Channel names of a synthetic slide with ``n_channels`` channels.

    DNA1, one membrane marker and the cell-type markers come first; beyond
    the named panel, channels are called ``Marker_<index>``.

    >>> channel_names_for(4)
    ['DNA1', 'NaKATPase', 'CD3', 'CD20']
    """
    return [m.name for m in _markers(0, n_channels)]


# -- counter-based random numbers -------------------------------------------

_MASK64 = (1 << 64) - 1
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _stream(name: str) -> int:
    return zlib.crc32(name.encode())


def _hash(seed: int, stream: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """64-bit hash of ``(seed, stream, a, b)``, broadcasting ``a`` against ``b``."""
    key = np.array([(seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03 + 1) & _MASK64], np.uint64)
    first = _mix(_mix(key) ^ np.asarray(a, np.int64).astype(np.uint64))
    return _mix(first ^ np.asarray(b, np.int64).astype(np.uint64))


def _to_uniform(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _uniform(seed: int, stream: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers, one per broadcast ``(a, b)``."""
    return _to_uniform(_hash(seed, stream, a, b))


def _value_noise(seed: int, stream: int, y: np.ndarray, x: np.ndarray, spacing: float) -> np.ndarray:
    """Smooth noise in [0, 1] on the grid ``y`` x ``x`` (same unit as ``spacing``).

    Lattice values are hashed from global lattice indices, so a point gets the
    same value whatever grid it is evaluated on.
    """
    fy, fx = y / spacing, x / spacing
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = fy - iy, fx - ix
    sy, sx = (ty * ty * (3 - 2 * ty))[:, None], (tx * tx * (3 - 2 * tx))[None, :]
    jy, jx = iy - iy.min(), ix - ix.min()
    lattice = _uniform(seed, stream, (iy.min() + np.arange(jy.max() + 2))[:, None],
                       (ix.min() + np.arange(jx.max() + 2))[None, :])
    row, col = jy[:, None], jx[None, :]
    top = lattice[row, col] * (1 - sx) + lattice[row, col + 1] * sx
    bottom = lattice[row + 1, col] * (1 - sx) + lattice[row + 1, col + 1] * sx
    return top * (1 - sy) + bottom * sy


def _poisson(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Poisson counts with means ``lam`` by inversion of the uniforms ``u``.

    Means above 10 use a Cornish-Fisher (skew-corrected normal) quantile,
    which keeps the inversion loop short.
    """
    lam, u = lam.ravel(), u.ravel()
    out = np.zeros(lam.shape, np.float64)
    big = lam > 10.0
    z = ndtri(u[big])
    out[big] = np.maximum(np.floor(lam[big] + np.sqrt(lam[big]) * z + (z * z - 1) / 6 + 0.5), 0.0)
    index = np.flatnonzero(~big)
    mean, draw = lam[index], u[index]
    term = np.exp(-mean)
    cdf = term.copy()
    k = 0
    while index.size:
        going = draw > cdf
        index, mean, draw, term, cdf = index[going], mean[going], draw[going], term[going], cdf[going]
        k += 1
        out[index] = k
        term = term * mean / k
        cdf = cdf + term
        if k > 100:  # unreachable for means <= 10 but guards rounding
            break
    return out


# -- the model --------------------------------------------------------------


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


@dataclass(frozen=True)
class _Cells:
    """Attributes of the generation cells of a rectangle, as 2D arrays."""

    present: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    kind: np.ndarray
    hard: np.ndarray
    mark: np.ndarray


def _fields(m: _Model, gy: np.ndarray, gx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Density, tumour and follicle fields at generation-cell centres."""
    y_um = (gy + 0.5) * GRID_UM
    x_um = (gx + 0.5) * GRID_UM
    s = m.seed
    dense = 0.65 * _value_noise(s, _stream("dense1"), y_um, x_um, 260.0) \
        + 0.35 * _value_noise(s, _stream("dense2"), y_um, x_um, 90.0)
    tumour = 0.8 * _value_noise(s, _stream("tumour1"), y_um, x_um, 120.0) \
        + 0.2 * _value_noise(s, _stream("tumour2"), y_um, x_um, 40.0)
    follicle = _value_noise(s, _stream("follicle"), y_um, x_um, 150.0)
    return dense, tumour, follicle


def _candidates(m: _Model, gy0: int, gy1: int, gx0: int, gx1: int) -> _Cells:
    """Candidate centres (px) of generation rows gy0..gy1-1 and columns gx0..gx1-1."""
    gy, gx = np.arange(gy0, gy1), np.arange(gx0, gx1)
    a, b = gy[:, None], gx[None, :]
    s = m.seed
    cy = (a + _uniform(s, _stream("y"), a, b)) * m.grid_px
    cx = (b + _uniform(s, _stream("x"), a, b)) * m.grid_px
    dense, tumour_field, follicle = _fields(m, gy, gx)
    ramp = np.clip((dense - 0.40) / 0.2, 0.0, 1.0)
    prob = 0.04 + 0.96 * ramp * ramp * (3 - 2 * ramp)
    tumour = tumour_field > 0.62
    prob = np.clip(m.density * np.where(tumour, 1.0, prob), 0.0, 1.0)
    present = (_uniform(s, _stream("occupied"), a, b) < prob) & (cy < m.shape[0]) & (cx < m.shape[1])
    present &= (cy >= 0) & (cx >= 0)
    u = _uniform(s, _stream("type"), a, b)
    in_follicle = follicle > 0.68
    immune = np.where(
        in_follicle,
        np.select([u < 0.2, u < 0.85, u < 0.92], [_T, _B, _MAC], _STROMA),
        np.select([u < 0.32, u < 0.40, u < 0.58], [_T, _B, _MAC], _STROMA),
    )
    kind = np.where(tumour, _TUMOUR, immune).astype(np.int8)
    hard = np.array([t.hard_core_um for t in _TYPES])[kind] / m.pixel_size_um
    mark = _uniform(s, _stream("mark"), a, b)
    return _Cells(present, cy, cx, kind, hard, mark)


def _retained(m: _Model, gy0: int, gy1: int, gx0: int, gx1: int) -> _Cells:
    """Cells left after hard-core thinning (Matérn II) in the given rectangle."""
    t = m.thin_ring
    c = _candidates(m, gy0 - t, gy1 + t, gx0 - t, gx1 + t)
    ny, nx = gy1 - gy0, gx1 - gx0
    inner = (slice(t, t + ny), slice(t, t + nx))
    keep = c.present[inner].copy()
    cy, cx, hard, mark = c.cy[inner], c.cx[inner], c.hard[inner], c.mark[inner]
    for dy in range(-t, t + 1):
        for dx in range(-t, t + 1):
            if dy == 0 and dx == 0:
                continue
            other = (slice(t + dy, t + dy + ny), slice(t + dx, t + dx + nx))
            close = (c.cy[other] - cy) ** 2 + (c.cx[other] - cx) ** 2 < (c.hard[other] + hard) ** 2
            # Ties in marks go to the earlier generation cell in raster order.
            first = c.mark[other] < mark if (dy, dx) > (0, 0) else c.mark[other] <= mark
            keep &= ~(c.present[other] & close & first)
    return _Cells(keep, cy, cx, c.kind[inner], hard, mark)


def _count_table(m: _Model) -> tuple[np.ndarray, np.ndarray]:
    """Cells before each (generation row, ``_K``-column block), and counts by type.

    ``table[gy, j]`` is the number of cells in generation cells that precede
    ``(gy, j * _K)`` in raster order; ids follow from it.
    """
    n_rows, n_cols = m.grid_shape
    n_blocks = math.ceil(n_cols / _K)
    table = np.empty((n_rows, n_blocks), np.int64)
    by_type = np.zeros(len(_TYPES), np.int64)
    total = 0
    for r0 in range(0, n_rows, _BAND):
        r1 = min(r0 + _BAND, n_rows)
        cells = _retained(m, r0, r1, 0, n_blocks * _K)
        per_block = cells.present.reshape(r1 - r0, n_blocks, _K).sum(axis=2)
        row_totals = per_block.sum(axis=1)
        row_starts = total + np.cumsum(row_totals) - row_totals
        table[r0:r1] = row_starts[:, None] + np.cumsum(per_block, axis=1) - per_block
        total += int(row_totals.sum())
        by_type += np.bincount(cells.kind[cells.present], minlength=len(_TYPES))
    return table, by_type


def _cell_ids(
    m: _Model, table: np.ndarray, gy0: int, gy1: int, gx0: int, gx1: int
) -> tuple[_Cells, np.ndarray]:
    """Retained cells of a rectangle and their global ids (0 where none)."""
    n_rows, _ = m.grid_shape
    start = min(gx0, (max(gx0, 0) // _K) * _K)
    cells = _retained(m, gy0, gy1, start, gx1)
    rows = np.clip(np.arange(gy0, gy1), 0, n_rows - 1)
    block = max(gx0, 0) // _K
    ahead = np.cumsum(cells.present, axis=1) - cells.present
    ids = np.where(cells.present, table[rows, block][:, None] + ahead + 1, 0)
    crop = slice(gx0 - start, None)
    cropped = _Cells(cells.present[:, crop], cells.cy[:, crop], cells.cx[:, crop],
                     cells.kind[:, crop], cells.hard[:, crop], cells.mark[:, crop])
    return cropped, ids[:, crop]


def _shape_params(m: _Model, gy: np.ndarray, gx: np.ndarray, kind: np.ndarray) -> dict[str, np.ndarray]:
    """Radius (px), irregularity and nucleus ellipse of each generation cell."""
    a, b = gy[:, None], gx[None, :]

    def draw(name: str, lo: np.ndarray | float = 0.0, hi: np.ndarray | float = 1.0) -> np.ndarray:
        return lo + (hi - lo) * _uniform(m.seed, _stream(name), a, b)

    table = {f: np.array([getattr(t, f) for t in _TYPES]) for f in
             ("radius_um", "a2", "a3_max", "nucleus_radius_um", "nucleus_aspect")}
    p = m.pixel_size_um
    radius = draw("radius", *table["radius_um"][kind].transpose(2, 0, 1)) / p
    phi2 = draw("phi2", 0.0, 2 * np.pi)
    nucleus = draw("nucleus", *table["nucleus_radius_um"][kind].transpose(2, 0, 1)) / p
    aspect = draw("aspect", *table["nucleus_aspect"][kind].transpose(2, 0, 1))
    minor = nucleus / np.sqrt(aspect)
    # The nucleus may sit off centre, but never so far that it misses the
    # centre pixel (which its cell always owns).
    shift = np.clip(minor - 0.75, 0.0, None) * draw("shift", 0.0, 0.35)
    angle = draw("shift_angle", 0.0, 2 * np.pi)
    return {
        "radius": radius,
        "a2": draw("a2", *table["a2"][kind].transpose(2, 0, 1)),
        "phi2": phi2,
        "a3": draw("a3") * table["a3_max"][kind],
        "phi3": draw("phi3", 0.0, 2 * np.pi),
        "major": nucleus * np.sqrt(aspect),
        "minor": minor,
        # Elongated cells carry their nucleus along their long axis.
        "orient": phi2 / 2,
        "oy": shift * np.sin(angle),
        "ox": shift * np.cos(angle),
        "membrane_phase": draw("membrane_phase", 0.0, 2 * np.pi),
    }


@dataclass(frozen=True)
class _Geometry:
    """Per-pixel cell geometry of a rectangle of pixels."""

    ids: np.ndarray  # global cell id, 0 outside cells
    local: np.ndarray  # 1 + flat index of the winning generation cell, 0 outside
    nucleus: np.ndarray  # bool
    rho2: np.ndarray  # squared elliptic radius within the nucleus ellipse
    theta: np.ndarray  # angle (rad) of the pixel around its cell centre
    winner: np.ndarray  # flat index of the nearest generation cell in the rectangle
    membrane_phase: np.ndarray  # angle (rad) where the cell's membrane is brightest
    cells: _Cells
    gy0: int
    gx0: int


def _geometry(m: _Model, table: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> _Geometry:
    """Cells and nuclei of pixels ``[y0, y1) x [x0, x1)`` (may extend past the slide)."""
    ys, xs = np.arange(y0, y1) + 0.5, np.arange(x0, x1) + 0.5
    g, r = m.grid_px, m.search_ring
    py, px = np.floor(ys / g).astype(np.int64), np.floor(xs / g).astype(np.int64)
    gy0, gy1, gx0, gx1 = int(py[0]) - r, int(py[-1]) + r + 1, int(px[0]) - r, int(px[-1]) + r + 1
    cells, ids = _cell_ids(m, table, gy0, gy1, gx0, gx1)
    cy = np.where(cells.present, cells.cy, np.inf)
    cx = np.where(cells.present, cells.cx, np.inf)
    ry, rx = py - gy0, px - gx0
    n_cols = cx.shape[1]
    best = np.full((ys.size, xs.size), np.inf)
    code = np.zeros(best.shape, np.int64)
    offsets = []
    # Offsets are visited in raster order, which is id order: ties go to the
    # smaller id whatever block is computed.
    for dy in range(-r, r + 1):
        rows = ry + dy
        ddy2 = (ys[:, None] - cy[rows]) ** 2
        cx_rows = cx[rows]
        for dx in range(-r, r + 1):
            cols = rx + dx
            d2 = np.take(ddy2, cols, axis=1) + (xs[None, :] - np.take(cx_rows, cols, axis=1)) ** 2
            better = d2 < best
            np.minimum(best, d2, out=best)
            np.putmask(code, better, len(offsets))
            offsets.append(dy * n_cols + dx)
    winner = (ry[:, None] * n_cols + rx[None, :]) + np.array(offsets)[code]
    found = np.isfinite(best)
    params = _shape_params(m, np.arange(gy0, gy1), np.arange(gx0, gx1), cells.kind)
    pick = {k: v.ravel().take(winner) for k, v in params.items()}
    dy_c = ys[:, None] - np.where(found, cells.cy.ravel().take(winner), ys[:, None])
    dx_c = xs[None, :] - np.where(found, cells.cx.ravel().take(winner), xs[None, :])
    theta = np.arctan2(dy_c, dx_c)
    reach = pick["radius"] * (1 + pick["a2"] * np.cos(2 * theta - pick["phi2"])
                              + pick["a3"] * np.cos(3 * theta - pick["phi3"]))
    inside = best <= reach * reach
    ny_, nx_ = dy_c - pick["oy"], dx_c - pick["ox"]
    cos, sin = np.cos(pick["orient"]), np.sin(pick["orient"])
    u, v = nx_ * cos + ny_ * sin, -nx_ * sin + ny_ * cos
    rho2 = (u / pick["major"]) ** 2 + (v / pick["minor"]) ** 2
    nucleus = inside & (rho2 <= 1.0)
    return _Geometry(np.where(inside, ids.ravel().take(winner), 0), np.where(inside, winner + 1, 0),
                     nucleus, rho2, theta, winner, pick["membrane_phase"], cells, gy0, gx0)


# -- per-block kernels ------------------------------------------------------


def _label_block(m: _Model, table: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``(2, Y, X)`` uint32 cell and nucleus labels of one block."""
    geo = _geometry(m, table, y0, y1, x0, x1)
    return np.stack([geo.ids, np.where(geo.nucleus, geo.ids, 0)]).astype(np.uint32)


def _expression(m: _Model, geo: _Geometry) -> np.ndarray:
    """Expected counts/px at full compartment weight, ``(C, gy, gx)`` per cell."""
    gy = np.arange(geo.gy0, geo.gy0 + geo.cells.kind.shape[0])[:, None]
    gx = np.arange(geo.gx0, geo.gx0 + geo.cells.kind.shape[1])[None, :]
    out = np.zeros((len(m.markers),) + geo.cells.kind.shape)
    dim = _uniform(m.seed, _stream("dim membrane"), gy, gx) < _DIM_FRACTION
    for c, marker in enumerate(m.markers):
        table = np.zeros((len(_TYPES), 3))
        table[:, 1] = 1.0  # an empty interval: types not listed do not express
        for kind, entry in marker.levels.items():
            table[kind] = entry
        level, lo, hi = table[geo.cells.kind].transpose(2, 0, 1)
        u = _uniform(m.seed, _stream(marker.stream), gy, gx)
        z = ndtri(_uniform(m.seed, _stream("var:" + (marker.variation_key or marker.name)), gy, gx))
        spread = np.exp(marker.sigma * z - marker.sigma**2 / 2)
        if marker.compartment == "membrane":
            spread = spread * np.where(dim, _DIM_MEMBRANE, 1.0)
        out[c] = np.where((u >= lo) & (u < hi), level * spread, 0.0)
    return out


def _membrane_ring(m: _Model, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weight of the membrane ring (0..1) and the touching neighbour (local id, 0 if none)."""
    inner, outer = m.ring_px
    near = ndimage.maximum_filter(local, size=2 * inner + 1, mode="nearest")
    near_min = ndimage.minimum_filter(local, size=2 * inner + 1, mode="nearest")
    far = ndimage.maximum_filter(local, size=2 * outer + 1, mode="nearest")
    big = int(local.max()) + 1  # stands for background in the minimum filter
    far_min = ndimage.minimum_filter(np.where(local == 0, big, local), size=2 * outer + 1, mode="nearest")
    cell = local > 0
    edge = cell & ((near != local) | (near_min != local))
    band = cell & ((far != local) | (far_min != local))
    weight = np.where(edge, 1.0, np.where(band, 0.45, 0.0))
    neighbour = np.where(far != local, far, np.where(far_min != local, far_min, 0))
    neighbour = np.where(cell & (neighbour != big), neighbour, 0)
    return weight, neighbour


def _image_block(m: _Model, table: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``(C, Y, X)`` uint16 counts of one block."""
    h = m.halo_px
    geo = _geometry(m, table, y0 - h, y1 + h, x0 - h, x1 + h)
    s, p = m.seed, m.pixel_size_um
    expr = _expression(m, geo)
    per_pixel = expr.reshape(len(expr), -1).take(geo.winner, axis=1)
    cell = geo.local > 0
    ys_um = (np.arange(y0 - h, y1 + h) + 0.5) * p
    xs_um = (np.arange(x0 - h, x1 + h) + 0.5) * p
    chromatin = _value_noise(s, _stream("chromatin"), ys_um, xs_um, 1.3)
    granules = _value_noise(s, _stream("granules"), ys_um, xs_um, 1.8)
    fibres = _value_noise(s, _stream("fibres"), ys_um, xs_um, 5.0) ** 3
    haze = 0.6 + 0.8 * _value_noise(s, _stream("haze"), ys_um, xs_um, 40.0)
    ring, neighbour = _membrane_ring(m, geo.local)
    weights = {
        "nuclear": geo.nucleus * (1.0 - 0.35 * np.clip(geo.rho2, 0, 1)) * (0.55 + 0.9 * chromatin),
        # Membrane markers also stain the cytoplasm faintly (~1 um resolution).
        "membrane": ring * (1.0 + 0.5 * np.cos(geo.theta - geo.membrane_phase)) / 1.5 + 0.2 * cell,
        "cytoplasm": cell * (1.0 - 0.75 * geo.nucleus) * (0.6 + 0.8 * granules),
        "extracellular": ~cell * 12.0 * fibres,
    }
    lam = np.stack([
        weights[mk.compartment] * (1.0 if mk.compartment == "extracellular" else per_pixel[c])
        for c, mk in enumerate(m.markers)
    ])
    if m.spillover > 0:
        # A boundary pixel's signal is partly its touching neighbour's.
        touching = neighbour > 0
        nb = expr.reshape(len(expr), -1).take(np.maximum(neighbour - 1, 0), axis=1)
        mix = m.spillover * ring * touching
        lam = (1.0 - mix) * lam + mix * nb
    sigma = m.psf_px
    lam = ndimage.gaussian_filter(lam, sigma=(0, sigma, sigma), truncate=_TRUNCATE, mode="nearest")
    lam = lam[:, h:-h, h:-h]
    lam += np.array([mk.background for mk in m.markers])[:, None, None] * haze[None, h:-h, h:-h]
    rows, cols = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    counts = np.empty(lam.shape)
    for c, marker in enumerate(m.markers):
        noise = _hash(s, _stream("noise:" + marker.name), rows, cols)
        counts[c] = _poisson(lam[c], _to_uniform(noise)).reshape(lam.shape[1:])
        hot = _uniform(s, _stream("hot:" + marker.name), rows, cols) < _HOT_RATE
        # The low bits of the noise hash are unused by the uniform: they set the hot value.
        counts[c] += np.where(hot, 100.0 + 900.0 * (noise & np.uint64(0x3FF)) / 1024.0, 0.0)
    return np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)


# -- public API -------------------------------------------------------------


@dataclass(frozen=True)
class SynthInfo:
    """What :func:`make_slide` wrote.

    Attributes
    ----------
    path : Path
        The OME-Zarr store; labels ``gt_cells`` and ``gt_nuclei`` inside.
    shape : tuple of int
        ``(C, Y, X)`` of the image (px).
    channel_names : tuple of str
    n_cells : int
        Cells in the ground truth; ids run 1..n_cells.
    pixel_size_um : float
    cell_type_counts : dict of str to int
        Cells per type (keys :data:`CELL_TYPES`).
    """

    path: Path
    shape: tuple[int, int, int]
    channel_names: tuple[str, ...]
    n_cells: int
    pixel_size_um: float
    cell_type_counts: dict[str, int]


def _validated_model(
    size: tuple[int, int], n_channels: int, seed: int, pixel_size_um: float,
    density: float, spillover: float, chunk_px: int,
) -> _Model:
    if len(size) != 2 or any(int(v) != v or v <= 0 for v in size):
        raise ConfigError(f"size must be two positive integers (H, W) in px; got {tuple(size)}.")
    if n_channels < 3:
        raise ChannelError(
            f"a synthetic slide needs at least 3 channels (DNA1, a membrane marker, CD3); "
            f"got n_channels={n_channels}."
        )
    if not 0.1 <= pixel_size_um <= 2.0:
        raise PixelSizeError(
            f"pixel size {pixel_size_um} um is outside 0.1..2 um for a synthetic slide; "
            "use e.g. 1.0 (IMC) or 0.5 (CODEX)."
        )
    if not 0 < density <= 10:
        raise ConfigError(f"density must be in (0, 10] (1 is typical tissue); got {density}.")
    if not 0 <= spillover <= 0.5:
        raise ConfigError(f"spillover must be a fraction in [0, 0.5]; got {spillover}.")
    if chunk_px < 16:
        raise ConfigError(f"chunk_px must be at least 16 px; got {chunk_px}.")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed}.")
    return _Model(int(seed), (int(size[0]), int(size[1])), float(pixel_size_um), float(density),
                  float(spillover), _markers(int(seed), int(n_channels)))


def _location(block_info: dict[Any, Any] | None) -> tuple[int, int, int, int]:
    assert block_info is not None
    (y0, y1), (x0, x1) = block_info[None]["array-location"][-2:]
    return y0, y1, x0, x1


def _image_chunk(m: _Model, table: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    return _image_block(m, table, *_location(block_info))


def _label_chunk(m: _Model, table: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    return _label_block(m, table, *_location(block_info))


def _arrays(m: _Model, chunk_px: int) -> tuple[da.Array, da.Array, np.ndarray]:
    table, by_type = _count_table(m)
    yx = da.core.normalize_chunks((chunk_px, chunk_px), m.shape)
    image = da.map_blocks(_image_chunk, m, table, chunks=((len(m.markers),), *yx), dtype=np.uint16,
                          meta=np.empty((0, 0, 0), np.uint16))
    labels = da.map_blocks(_label_chunk, m, table, chunks=((2,), *yx), dtype=np.uint32,
                           meta=np.empty((0, 0, 0), np.uint32))
    return image, labels, by_type


def synth_arrays(
    size: tuple[int, int],
    n_channels: int = 12,
    seed: int = 0,
    pixel_size_um: float = 1.0,
    density: float = 1.0,
    spillover: float = 0.0,
    chunk_px: int = 256,
) -> tuple[da.Array, da.Array, da.Array, list[str]]:
    """Lazy synthetic IMC-like image and its ground truth.

    Parameters
    ----------
    size : (int, int)
        Slide height and width (px).
    n_channels : int
        Number of channels (>= 3); see :func:`channel_names_for`.
    seed : int
        Same seed, same arrays (byte for byte); chunking does not matter.
    pixel_size_um : float
        Pixel size (um/px, 0.1..2). Cells are 10-20 um and nuclei 5-9 um
        across, so in px they scale with ``1 / pixel_size_um``.
    density : float
        Multiplier of the probability that tissue holds a cell (1: typical).
    spillover : float
        Fraction (0..0.5) of a touching neighbour's signal mixed into each
        membrane-ring pixel (lateral spillover).
    chunk_px : int
        Chunk side (px) of the returned arrays.

    Returns
    -------
    image : dask array, (C, Y, X) uint16
        Ion counts.
    cells, nuclei : dask arrays, (Y, X) uint32
        Ground truth; ids are consecutive from 1 and nucleus ``k`` lies
        inside cell ``k``.
    channel_names : list of str
    """
    m = _validated_model(size, n_channels, seed, pixel_size_um, density, spillover, chunk_px)
    image, labels, _ = _arrays(m, chunk_px)
    return image, labels[0], labels[1], [mk.name for mk in m.markers]


def make_slide(
    path: str | Path,
    size: tuple[int, int] = (1024, 1024),
    n_channels: int = 12,
    seed: int = 0,
    pixel_size_um: float = 1.0,
    density: float = 1.0,
    spillover: float = 0.0,
    chunk_px: int = 256,
    ngff_version: NGFFVersion = "0.5",
    overwrite: bool = False,
) -> SynthInfo:
    """Write a synthetic IMC-like slide with ground truth as OME-Zarr.

    The image goes to ``path`` (with a pyramid and channel names), the ground
    truth to ``labels/gt_cells`` and ``labels/gt_nuclei``. Generation is
    chunked, so memory does not grow with the slide size.

    Parameters
    ----------
    path : str or Path
        Output store; must not exist unless ``overwrite``.
    size, n_channels, seed, pixel_size_um, density, spillover, chunk_px
        As in :func:`synth_arrays`; ``chunk_px`` is also the zarr chunk side.
    ngff_version : {"0.5", "0.4"}
    overwrite : bool
        Replace an existing store.

    Returns
    -------
    SynthInfo

    Raises
    ------
    ConfigError, ChannelError, PixelSizeError, OutputExistsError
    """
    if ngff_version not in ("0.4", "0.5"):
        raise ConfigError(f"ngff_version must be '0.4' or '0.5'; got {ngff_version!r}.")
    m = _validated_model(size, n_channels, seed, pixel_size_um, density, spillover, chunk_px)
    image, labels, by_type = _arrays(m, chunk_px)
    names = [mk.name for mk in m.markers]
    write_image(path, image, names, m.pixel_size_um, chunk_px=chunk_px,
                ngff_version=ngff_version, overwrite=overwrite)
    write_labels(path, "gt_cells", labels[0], m.pixel_size_um, chunk_px=chunk_px)
    write_labels(path, "gt_nuclei", labels[1], m.pixel_size_um, chunk_px=chunk_px)
    return SynthInfo(
        path=Path(path),
        shape=(len(names), *m.shape),
        channel_names=tuple(names),
        n_cells=int(by_type.sum()),
        pixel_size_um=m.pixel_size_um,
        cell_type_counts={name: int(n) for name, n in zip(CELL_TYPES, by_type)},
    )
