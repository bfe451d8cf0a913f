"""Cell centres, types, shapes and the per-pixel cell and nucleus labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tiled_seg.synth._model import GRID_UM, _Model
from tiled_seg.synth._panel import _B, _MAC, _STROMA, _T, _TUMOUR, _TYPES
from tiled_seg.synth._random import _stream, _uniform, _value_noise

#: Prefix counts are stored every ``_K`` generation columns.
_K = 64
#: Generation rows processed at once when counting cells.
_BAND = 64


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
    offsets: list[int] = []
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


def _label_block(m: _Model, table: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``(2, Y, X)`` uint32 cell and nucleus labels of one block."""
    geo = _geometry(m, table, y0, y1, x0, x1)
    return np.stack([geo.ids, np.where(geo.nucleus, geo.ids, 0)]).astype(np.uint32)
