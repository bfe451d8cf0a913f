"""Channel intensities of a block: expression, membrane ring, spillover, blur and noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from tiled_seg.synth._geometry import _Geometry, _geometry
from tiled_seg.synth._model import _TRUNCATE, _Model
from tiled_seg.synth._panel import _TYPES
from tiled_seg.synth._random import _hash, _poisson, _stream, _to_uniform, _uniform, _value_noise

#: Fraction of cells whose membrane markers are dim, and by how much.
_DIM_FRACTION = 0.1
_DIM_MEMBRANE = 0.35
#: Hot pixels per pixel and channel.
_HOT_RATE = 5e-5


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
