"""Counter-based random numbers: hashes of ``(seed, stream, row, column)``."""

from __future__ import annotations

import zlib

import numpy as np
from scipy.special import ndtri

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
